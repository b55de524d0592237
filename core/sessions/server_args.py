"""llama-server flags a server needs to take sessions, in one place for every front end."""
from __future__ import annotations

import os
from collections.abc import Sequence

from diskllm.core.errors import DiskLLMError
from diskllm.core.models.gguf import read_gguf_info


def session_server_args(model_path: str | os.PathLike[str], extra_args: Sequence[str] = ()) -> list[str]:
    """Flags to add for a server that will save and restore sessions: --swa-full for SWA/iSWA models.

    Without it this llama.cpp pin keeps only the sliding window of an SWA cache
    and never reuses a restored state (docs/sessions.md). `extra_args` are the
    flags already chosen, so a user's own --swa-full is not doubled. An unreadable
    header adds nothing: the start reports that error itself."""
    if "--swa-full" in extra_args:
        return []
    try:
        return ["--swa-full"] if read_gguf_info(model_path).is_swa else []
    except DiskLLMError:
        return []
