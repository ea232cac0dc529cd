"""The request path between HTTP and the engine: a pipeline of named stages (authenticate, limit, cache, generate,
record) and the shaping of OpenAI responses."""
