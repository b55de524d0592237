"""User-facing errors: one line, no traceback."""


class DiskLLMError(Exception):
    """An error the CLI reports as `error: <msg>` (exit code 1)."""
