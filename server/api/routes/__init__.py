"""HTTP endpoints, one module per surface."""
