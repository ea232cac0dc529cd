"""The server's typed settings and where their secret values come from."""
