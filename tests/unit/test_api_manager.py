"""The daemon's memory budget: loading a model that does not fit stops the least recently used idle ones."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from diskllm.core.api.manager import Loaded, ModelManager
from diskllm.core.paths import Home


def loaded(name: str, size: int, last_used: float, busy: int = 0) -> Loaded:
    model = SimpleNamespace(name=name, size=size)
    return Loaded(model, SimpleNamespace(process=None), 1024, 0.0, busy=busy, last_used=last_used)  # type: ignore[arg-type]


async def test_budget_stops_least_recently_used_idle(tmp_path: Path):
    mgr = ModelManager(Home(tmp_path), keep_alive=300, memory_budget=100)
    stopped: list[str] = []

    async def stop(key: str) -> None:
        stopped.append(key)
        mgr.loaded.pop(key)
    mgr._stop = stop  # type: ignore[method-assign]
    mgr.loaded = {"a": loaded("a", 40, 1.0), "b": loaded("b", 40, 2.0, busy=1), "c": loaded("c", 10, 3.0)}
    await mgr._make_room(SimpleNamespace(name="d", size=30))  # type: ignore[arg-type]
    assert stopped == ["a"]                     # 40+10+30 fits now; b is busy, c is newer
    await mgr._make_room(SimpleNamespace(name="e", size=95))  # type: ignore[arg-type]
    assert stopped == ["a", "c"] and list(mgr.loaded) == ["b"]  # only busy b is left: load anyway
