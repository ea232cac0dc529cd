"""The inference engine: llama.cpp behind one protocol (`base.py`), on its own thread, knowing nothing of HTTP."""
