"""Cross-process locks for sessions: one writer per session, one user of a server slot at a time.

Why: two clients pinned to the same slot of one server interleave their restore,
chat and save requests; worse, upstream's prompt-cache update runs on a pinned
slot even while it is busy and swaps another prompt's KV in under the running
request. So every slot operation holds the slot lock, and a turn that finds the
slot last used by someone else restores its own KV first."""
from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from diskllm.core.server import slot_lock_path
from diskllm.core.sessions.errors import SessionBusy


@dataclass
class Holder:
    pid: int
    command: str

    def describe(self) -> str:
        return f"pid {self.pid} ({self.command})" if self.command else f"pid {self.pid}"


def _me() -> str:
    return f"{os.getpid()}\n{' '.join([Path(sys.argv[0]).name, *sys.argv[1:]])[:200]}\n"


def _read_holder(fd: int) -> Holder | None:
    try:
        text = os.pread(fd, 4096, 0).decode("utf-8", errors="replace")
        pid, _, command = text.partition("\n")
        return Holder(int(pid), command.strip())
    except (OSError, ValueError):
        return None


def _open_private(path: Path) -> int:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o600)


class SessionLock:
    """POSIX record lock on sessions/.locks/NAME.lock: owned by the process, so a
    second runner in the same process (the TUI switching back) is not refused,
    and the kernel drops it when the process dies."""

    def __init__(self, root: Path, name: str):
        self.path = root / ".locks" / f"{name}.lock"
        self.name = name
        self._fd: int | None = None

    def acquire(self) -> None:
        if self._fd is not None:
            return
        fd = _open_private(self.path)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _read_holder(fd)
            os.close(fd)
            who = holder.describe() if holder else "another process"
            raise SessionBusy(f"session '{self.name}' is open in {who}; "
                              "close it there or use another --session name") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, _me().encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the lock
            self._fd = None


class SlotLock:
    """flock on run/slot-HOST-PORT-SLOT.lock; the file also says who used the slot last."""

    def __init__(self, run_dir: Path, base_url: str, slot_id: int):
        self.path = slot_lock_path(run_dir, base_url, slot_id)

    @contextlib.asynccontextmanager
    async def hold(self, user: str) -> AsyncIterator["SlotUse"]:
        """Hold the slot; SlotUse.foreign says it was last used by someone other than `user`."""
        fd = _open_private(self.path)
        try:
            while True:  # polled, not a blocking call in a thread: cancellable
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    await asyncio.sleep(0.05)
            last = os.pread(fd, 4096, 0).decode("utf-8", errors="replace")
            use = SlotUse(fd, foreign=last != user)
            use.claim(user)
            try:
                yield use
            except BaseException:
                use.claim("")  # the slot's content is unknown after a failure
                raise
        finally:
            os.close(fd)


@dataclass
class SlotUse:
    fd: int
    foreign: bool

    def claim(self, user: str) -> None:
        """Record who the slot's KV belongs to now."""
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, user.encode(), 0)
