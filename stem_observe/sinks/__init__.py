"""Sinks: receivers that turn signals into metrics (``metrics``), spans (``tracing``) and
log-record fields (``logs``). Each is a set of handlers with no I/O on the hot path."""
