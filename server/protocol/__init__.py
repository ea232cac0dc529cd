"""Request and reply bodies of every API the server speaks; a base layer that imports nothing of the server."""
