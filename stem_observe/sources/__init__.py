"""Sources: what emits signals. ``worker`` is the plain-Python API; other sources (the Stem
Redis watcher, the Celery plugin) live beside it and know nothing of the sinks."""
