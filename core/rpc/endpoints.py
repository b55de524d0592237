"""HOST:PORT[,HOST:PORT...] as `--rpc` and config `rpc` take it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from diskllm.core.errors import DiskLLMError

DEFAULT_WORKER_PORT = 50052  # rpc-server's own default
LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        return self.host in LOOPBACK or self.host.startswith("127.")


def parse_endpoint(text: str, where: str = "--rpc") -> Endpoint:
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit():
        raise DiskLLMError(f"{where}: '{text}' is not HOST:PORT (e.g. 192.168.1.20:50052)")
    if ":" in host or host.startswith("["):
        # ggml-rpc splits at the first ':' and cannot reach an IPv6 literal
        raise DiskLLMError(f"{where}: '{text}': IPv6 addresses are not supported by llama.cpp's RPC client; "
                           "use an IPv4 address or a host name")
    n = int(port)
    if not 1 <= n <= 65535:
        raise DiskLLMError(f"{where}: '{text}': port {n} is out of range (1-65535)")
    return Endpoint(host, n)


def parse_endpoints(value: str | Iterable[str], where: str = "--rpc") -> list[Endpoint]:
    """'a:1,b:2' or ['a:1', 'b:2'] -> endpoints; the same one twice is an error."""
    items = value.split(",") if isinstance(value, str) else list(value)
    out: list[Endpoint] = []
    for item in items:
        if not isinstance(item, str):
            raise DiskLLMError(f"{where}: {item!r} is not a HOST:PORT string")
        if not item.strip():
            continue
        ep = parse_endpoint(item, where)
        if ep in out:
            raise DiskLLMError(f"{where}: worker {ep} is listed twice")
        out.append(ep)
    return out


def rpc_flag(endpoints: Iterable[Endpoint]) -> str:
    return ",".join(str(e) for e in endpoints)
