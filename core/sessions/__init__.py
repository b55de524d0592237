"""Sessions: a chat transcript plus the server slot's KV state, saved and restored.

A session is a folder `$DISKLLM_HOME/sessions/<name>/` holding

- `meta.json`       model (name, path, fingerprint, digest), ctx, cache types,
                    KV backend, server build id, token count, kv.bin size and
                    sha256, created/updated;
- `transcript.json` the messages (and the system prompt);
- `kv.bin`          the slot state written by llama-server (`/slots/0?action=save`).

Crash safety: a save builds the new folder beside the old one (`.stage-*`),
fsyncs every file, then swaps the two folders with one `renameat2(RENAME_EXCHANGE)`
(or two renames plus recovery where the filesystem lacks it). A crash at any
moment leaves the old or the new session whole; leftovers of dead processes are
cleaned up by the next store operation.

The server writes slot files only as plain names inside its --slot-save-path
(which is this folder's parent), so the KV goes through a temp name there and
is moved in; a restore hard-links kv.bin to a temp name for the server to read.

Modules: errors, fsync (durable writes), build_id, identity (what a session is
bound to and the compatibility rule), records, store (folders on disk), runner
(slot save/restore/chat over HTTP). Core only: no UI imports; both front ends
use SessionStore and SessionRunner.
"""
from __future__ import annotations

from diskllm.core.sessions.build_id import build_id_of
from diskllm.core.sessions.errors import (
    SessionCorrupt, SessionError, SessionExists, SessionMismatch, SessionNotFound,
)
from diskllm.core.sessions.identity import ModelInfo, check_compatible, model_fingerprint
from diskllm.core.sessions.records import (
    ReuseReport, RestoreReport, SaveReport, Session, SessionInfo, SessionMeta, SwitchReport, TurnDone,
)
from diskllm.core.sessions.runner import SessionRunner
from diskllm.core.sessions.store import SessionStore, read_state_header, validate_name

__all__ = [
    "ModelInfo", "ReuseReport", "RestoreReport", "SaveReport", "Session", "SessionCorrupt", "SessionError",
    "SessionExists", "SessionInfo", "SessionMeta", "SessionMismatch", "SessionNotFound", "SessionRunner",
    "SessionStore", "SwitchReport", "TurnDone", "build_id_of", "check_compatible", "model_fingerprint",
    "read_state_header", "validate_name",
]
