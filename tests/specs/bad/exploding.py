"""Helper for the malformed-spec corpus: a handler module that fails at import time."""

raise RuntimeError("database is not configured")
