"""Who may call the API and how much: API keys (PostgreSQL) and per-key rate limits (Redis)."""
