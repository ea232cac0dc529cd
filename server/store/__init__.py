"""PostgreSQL and Redis: connections, schema migrations and the background audit writer."""
