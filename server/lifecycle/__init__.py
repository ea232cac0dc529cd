"""Which model serves, how it is loaded, swapped and drained, and how the process shuts down."""
