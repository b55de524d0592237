"""Ask a worker the ggml RPC handshake before llama-server does.

At this pin llama-server aborts (GGML_ABORT) on a worker it cannot reach and
waits forever on one that accepts but never answers (an rpc-server serves one
client at a time; the next one waits in its accept queue). So `run --rpc` checks
each worker first, with a timeout, and names the one that fails.

Wire format (ggml/src/ggml-rpc/ggml-rpc.cpp, protocol 7.x, little-endian):
request = cmd u8 | size u64 | payload; reply = size u64 | payload."""
from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

from diskllm.core.errors import DiskLLMError
from diskllm.core.rpc.endpoints import Endpoint

PROTO_MAJOR = 7
CMD_GET_DEVICE_MEMORY, CMD_HELLO, CMD_DEVICE_COUNT = 11, 14, 15
CONN_CAPS = 24  # RPC_CONN_CAPS_SIZE; all zero = plain TCP, no RDMA


@dataclass(frozen=True)
class WorkerInfo:
    endpoint: Endpoint
    version: tuple[int, int, int]
    devices: int
    free: int   # bytes the worker offers (rpc-server --mem caps it), summed over devices
    total: int


class WorkerError(DiskLLMError):
    """A worker that cannot take part; the message names it."""


def _recv(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionResetError("connection closed")
        buf += chunk
    return buf


def _call(sock: socket.socket, cmd: int, payload: bytes, reply: int) -> bytes:
    sock.sendall(struct.pack("<BQ", cmd, len(payload)) + payload)
    (size,) = struct.unpack("<Q", _recv(sock, 8))
    if size != reply:
        raise ValueError(f"reply of {size} bytes, expected {reply}")
    return _recv(sock, reply)


def probe(ep: Endpoint, timeout: float = 5.0) -> WorkerInfo:
    """Handshake, device count and memory of one worker; WorkerError naming it otherwise."""
    try:
        sock = socket.create_connection((ep.host, ep.port), timeout=timeout)
    except socket.gaierror:
        raise WorkerError(f"worker {ep}: unknown host '{ep.host}'") from None
    except (TimeoutError, socket.timeout):
        raise WorkerError(f"worker {ep} is unreachable (no answer in {timeout:.0f} s)") from None
    except OSError as e:
        raise WorkerError(f"worker {ep} is unreachable ({e.strerror or e}): "
                          f"start one there with 'diskllm worker --port {ep.port}'") from None
    try:
        with sock:
            try:
                hello = _call(sock, CMD_HELLO, bytes(CONN_CAPS), 4 + CONN_CAPS)
            except (TimeoutError, socket.timeout):
                raise WorkerError(f"worker {ep} accepts but does not answer within {timeout:.0f} s: "
                                  "it serves another llama-server (one client at a time)") from None
            version = tuple(hello[:3])
            if version[0] != PROTO_MAJOR:
                raise WorkerError(f"worker {ep} speaks RPC protocol {'.'.join(map(str, version))}, this build "
                                  f"{PROTO_MAJOR}.x: run the same DiskLLM build on every host")
            (count,) = struct.unpack("<I", _call(sock, CMD_DEVICE_COUNT, b"", 4))
            free = total = 0
            for dev in range(count):
                f, t = struct.unpack("<QQ", _call(sock, CMD_GET_DEVICE_MEMORY, struct.pack("<I", dev), 16))
                free, total = free + f, total + t
    except (OSError, ValueError, struct.error) as e:
        raise WorkerError(f"worker {ep} is not a ggml rpc-server or broke off the handshake ({e})") from None
    return WorkerInfo(ep, (version[0], version[1], version[2]), count, free, total)


def reachable(ep: Endpoint, timeout: float = 1.0) -> bool:
    """Does anything accept connections there? (No handshake: a busy worker counts.)"""
    try:
        with socket.create_connection((ep.host, ep.port), timeout=timeout):
            return True
    except OSError:
        return False
