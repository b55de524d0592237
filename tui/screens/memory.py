"""Memory monitor: the active server's memory, live, with sparklines.

Fed by MemorySample events from the App's poller (services.watch_server),
which reads /proc in a thread and schedules its next read only after the
last one finished."""
from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Label, Static

from diskllm.core.errors import DiskLLMError
from diskllm.core.models.show import estimate_memory
from diskllm.core.rpc.split import plan_split
from diskllm.core.server import PagingStats

from .. import messages as m
from ..state import human_bytes
from ..widgets.metric import MetricRow
from .base import PaneScreen

METRICS = (
    ("Private RAM", "rss_anon", "RssAnon from /proc/PID/status: memory only this process holds"),
    ("File-backed RSS", "rss_file", "RssFile: weights and KV pages in the page cache (evictable)"),
    ("KV resident", "kv_resident", "Resident pages of the KV file mappings (/proc/PID/smaps)"),
    ("KV on SSD", "kv_disk", "Blocks allocated by the KV files on disk (sparse: grows with use)"),
    ("Weights resident", "weights_resident", "RssFile minus KV resident"),
    ("System available", "sys_available", "MemAvailable of the whole machine"),
)


class MemoryScreen(PaneScreen):
    PANE = "memory"
    CSS_PATH = "memory.tcss"
    BINDINGS = [Binding("x", "stop", "Stop server", id="memory.stop")]

    def compose_pane(self) -> ComposeResult:
        with Horizontal(id="memory-body"):
            with Vertical(id="metrics"):
                yield Label("", id="memory-title", classes="title")
                for label, key, help in METRICS:
                    yield MetricRow(label, key, help)
            yield Static(id="compare")

    def show_state(self) -> None:
        samples = list(self.bench.memory)
        for _, key, _ in METRICS:
            self.query_one(f"#metric-{key}", MetricRow).show([getattr(s, key) for s in samples])
        self._compare(samples[-1] if samples else None)

    def _compare(self, last: m.MemorySample | None) -> None:
        title = self.query_one("#memory-title", Label)
        box = self.query_one("#compare", Static)
        entry, info = self.bench.server, self.bench.server_info
        if entry is None:
            title.update("No server running · start one from the Models pane (F1)")
            box.update("")
            box.display = False
            return
        box.display = True
        n = len(self.bench.memory)
        title.update(f"{entry.model} · pid {entry.pid} · last {n} s")
        lines = [f"[b]Same ctx ({entry.ctx:,}), ram backend[/b]"]
        if info is not None:
            e = estimate_memory(info, entry.ctx)
            lines.append(f"private RAM ~ {human_bytes(e.ram_private)}")
            lines.append("(KV from GGUF metadata,")
            lines.append(" + compute buffers)")
        else:
            lines.append("(no GGUF header)")
        lines += self._split_lines(entry, info)
        lines.append("")
        lines.append(f"[b]This server[/b] (kv {entry.kv_backend})")
        if last is not None:
            lines.append(f"private RAM {human_bytes(last.rss_anon)}")
            lines.append(f"peak RSS    {human_bytes(last.vm_hwm)}")
            if info is not None and entry.kv_backend == "ssd":
                saved = estimate_memory(info, entry.ctx).ram_private
                lines.append(f"KV kept off RAM: up to {human_bytes(saved)}")
            lines += self._paging_lines(last.paging)
        else:
            lines.append("waiting for the first reading…")
        box.update("\n".join(lines))

    @staticmethod
    def _paging_lines(p: PagingStats | None) -> list[str]:
        """While paging: why a reply is slow, and what more RAM would buy."""
        if p is None or not p.active:
            return []
        lines = ["", f"[b]Paging[/b] budget {human_bytes(p.budget)} ({p.budget_source})",
                 f"resident {human_bytes(p.resident)} of {human_bytes(p.working_set)}",
                 f"streams {human_bytes(p.streamed_per_token)}/token"]
        if p.read_path == "faults":
            lines.append("by plain page faults (faster here)")
        elif p.large_folios:
            lines.append("in 2 MiB folios")  # chosen by the working set's shape, not timed here
        lines += [f"reads {human_bytes(int(p.read_per_second))}/s",
                  f"+{human_bytes(p.more_ram_helps)} RAM: no streaming"]
        return lines

    @staticmethod
    def _split_lines(entry, info) -> list[str]:
        """What each host holds, as the server was started (its -ngl and --tensor-split)."""
        if not entry.rpc or info is None:
            return []
        try:
            split = plan_split(info, entry.ctx, entry.rpc, entry.ngl, entry.tensor_split or None)
        except DiskLLMError:
            return []
        lines = ["", f"[b]Split over {len(entry.rpc)} RPC worker{'s' if len(entry.rpc) > 1 else ''}[/b] "
                     f"(-ngl {split.ngl})"]
        for h in split.hosts:
            where = "SSD" if h.name == "main" and entry.kv_backend == "ssd" else "RAM"
            lines.append(f"{'main' if h.name == 'main' else h.name}: {h.describe_layers()}")
            lines.append(f"  weights {human_bytes(h.weights)}, KV {human_bytes(h.kv)} ({where})")
        lines.append("figures here: the main host")
        return lines

    def on_memory_sample(self, msg: m.MemorySample) -> None:
        self.show_state()

    def on_server_started(self, msg: m.ServerStarted) -> None:
        self.show_state()

    def on_server_stopped(self, msg: m.ServerStopped) -> None:
        self.show_state()

    def on_server_died(self, msg: m.ServerDied) -> None:
        self.query_one("#memory-title", Label).update(
            f"[red]{msg.entry.model} died[/] · figures below are its last readings")

    def action_stop(self) -> None:
        self.bench.action_stop_server()
