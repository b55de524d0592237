"""What can go wrong with a session: one DiskLLMError subclass per case."""
from __future__ import annotations

from diskllm.core.errors import DiskLLMError


class SessionError(DiskLLMError):
    """Any session problem; one line for the CLI."""


class SessionNotFound(SessionError):
    pass


class SessionExists(SessionError):
    pass


class SessionCorrupt(SessionError):
    """meta.json or kv.bin is unreadable, truncated or does not match its checksum."""


class SessionMismatch(SessionError):
    """The session cannot go into this server: other model, cache types or too small a ctx."""


class SessionBusy(SessionError):
    """Another process has the session open: a second writer would lose turns."""


class SessionContextFull(SessionError):
    """The transcript no longer fits the server's context: resume needs a larger --ctx."""
