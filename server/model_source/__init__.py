"""Where the GGUF comes from: a local file, the demo package, or Azure Blob storage (downloaded, verified, cached)."""
