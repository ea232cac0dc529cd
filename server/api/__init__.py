"""The OpenAI-compatible HTTP API. It talks to the engine only through server.engine.base."""
