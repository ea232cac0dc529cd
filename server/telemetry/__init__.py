"""Metrics, logs and traces: how an operator sees what the server does."""
