"""What each worker process of a multi-worker daemon gets (pure functions of the config).

A call lives on one worker from its first byte to its summary, so workers share nothing about calls:
- websocket listeners are shared through SO_REUSEPORT (the kernel spreads connections over the workers);
- RTP ports are split into disjoint slices, one per worker; the supervisor's control API hands out the
  ports of the worker it picks, so every packet of a call reaches that worker;
- WHIP, the RTP control API and /metrics are served by the supervisor on the configured addresses and
  forwarded to the workers, which listen on loopback ports of their own;
- each worker has its own outbox partition (`<stem>-<n><suffix>`) and its own upstream connections.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from daemon.config import Config, parse_hostport

#: loopback, any port: the worker's private listeners, reached only through the supervisor
PRIVATE_LISTEN = "127.0.0.1:0"


def usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def worker_count(setting: int | str, cores: int | None = None) -> int:
    """`[process] workers`: a number, or "auto" for one worker per usable core."""
    if setting == "auto":
        return cores if cores is not None else usable_cores()
    assert isinstance(setting, int)
    return setting


def outbox_partition(path: str, index: int) -> str:
    """spoofwatch-outbox.sqlite3 → spoofwatch-outbox-<index>.sqlite3 (same directory)."""
    p = Path(path)
    return str(p.with_name(f"{p.stem}-{index}{p.suffix}"))


def outbox_partitions(path: Path) -> list[Path]:
    """Every file that holds outbox events for this configured path: the single-process file and every
    worker partition beside it, in index order."""
    found = [path] if path.exists() else []
    parts = []
    for candidate in path.parent.glob(f"{path.stem}-*{path.suffix}"):
        tail = candidate.name[len(path.stem) + 1:len(candidate.name) - len(path.suffix) or None]
        if tail.isdigit():
            parts.append((int(tail), candidate))
    return found + [p for _, p in sorted(parts)]


def rtp_slice(port_min: int, port_max: int, index: int, count: int) -> tuple[int, int]:
    """Worker `index`'s disjoint slice of [port_min, port_max]: whole even/odd pairs (RTP, RTCP), as
    even a share as the range allows. Raises ValueError when the range has fewer pairs than workers."""
    first = port_min + (port_min % 2)
    pairs = (port_max - first + 1) // 2
    if pairs < count:
        raise ValueError(f"ingest.rtp: {pairs} port pairs cannot be split over {count} workers")
    per, extra = divmod(pairs, count)
    start_pair = index * per + min(index, extra)
    n_pairs = per + (1 if index < extra else 0)
    lo = first + 2 * start_pair
    return lo, lo + 2 * n_pairs - 1


def worker_config(cfg: Config, index: int, count: int, shared: Mapping[str, str] | None = None) -> Config:
    """The config worker `index` of `count` runs with. With one worker, the config itself. `shared`: the
    concrete HOST:PORT the supervisor reserved for each shared listener (`websocket`: every websocket
    dialect), so that a configured port 0 means one port for every worker."""
    if count == 1:
        return cfg
    ingest = cfg.ingest
    if shared and "websocket" in shared:
        ingest = dataclasses.replace(ingest, websocket=dataclasses.replace(ingest.websocket,
                                                                           listen=shared["websocket"]))
    if shared and "audiosocket" in shared:
        ingest = dataclasses.replace(ingest, audiosocket=dataclasses.replace(ingest.audiosocket,
                                                                             listen=shared["audiosocket"]))
    lo, hi = rtp_slice(ingest.rtp.port_min, ingest.rtp.port_max, index, count)
    rtp = dataclasses.replace(ingest.rtp, port_min=lo, port_max=hi, control_listen=PRIVATE_LISTEN)
    changes: dict[str, object] = {"rtp": rtp}
    whip = getattr(ingest, "whip", None)
    if whip is not None:
        changes["whip"] = dataclasses.replace(whip, listen=PRIVATE_LISTEN)
    return dataclasses.replace(
        cfg,
        http=dataclasses.replace(cfg.http, listen=PRIVATE_LISTEN),
        outbox=dataclasses.replace(cfg.outbox, path=outbox_partition(cfg.outbox.path, index)),
        ingest=dataclasses.replace(ingest, **changes),  # type: ignore[arg-type]
    )


@dataclass(frozen=True)
class WorkerRole:
    """Who this process is under the supervisor: worker `index` of `count`, and the shared listeners."""

    index: int
    count: int
    shared: Mapping[str, str] = field(default_factory=dict)

    def apply(self, cfg: Config) -> Config:
        return worker_config(cfg, self.index, self.count, self.shared)


def reserve_shared_port(listen: str) -> tuple[socket.socket, str]:
    """Bind (never listen on) a SO_REUSEPORT socket at `listen`: port 0 becomes one concrete port for all
    workers, and the port stays this host's while a worker restarts. The kernel only spreads connections
    over listening sockets, so the placeholder takes none. Keep the socket open for the supervisor's life."""
    host, port = parse_hostport(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    bound = sock.getsockname()[1]
    return sock, f"[{host}]:{bound}" if family == socket.AF_INET6 else f"{host}:{bound}"
