"""Binding the RTP port range: every free (RTP, RTCP = RTP+1) pair is bound, the taken ones are
skipped and reported (one busy port must not keep the daemon from starting), and the receive buffer
the kernel really gave is read back (it silently caps SO_RCVBUF at net.core.rmem_max)."""

from __future__ import annotations

import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path

EPHEMERAL_RANGE_PATH = Path("/proc/sys/net/ipv4/ip_local_port_range")


@dataclass
class BoundPorts:
    pairs: list[tuple[int, socket.socket, socket.socket]] = field(default_factory=list)  # (rtp port, rtp, rtcp)
    unavailable: list[tuple[int, str]] = field(default_factory=list)  # (port, why)
    rcvbuf_bytes: int = 0  # effective SO_RCVBUF (as the kernel accounts it, see effective_rcvbuf)
    rcvbuf_reported: int = 0  # what getsockopt read back


def effective_rcvbuf(sock: socket.socket) -> tuple[int, int]:
    """(usable size, raw getsockopt value). Linux doubles the value set (half is bookkeeping
    overhead) and reports the doubled value, so the size comparable to what was asked is half."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    return (raw // 2 if sys.platform.startswith("linux") else raw), raw


def bind_pairs(host: str, port_min: int, port_max: int, rcvbuf: int) -> BoundPorts:
    """Bind each even port of [port_min, port_max) with its odd RTCP port. Never raises for a taken
    port: the pair is left out and listed in `unavailable`."""
    out = BoundPorts()
    first = port_min + (port_min % 2)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for port in range(first, port_max, 2):
        socks: list[socket.socket] = []
        failed: tuple[int, str] | None = None
        for p in (port, port + 1):
            try:
                sock = socket.socket(family, socket.SOCK_DGRAM)  # (EMFILE here: the fd limit is too low)
                socks.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
                sock.bind((host, p))
                sock.setblocking(False)
            except OSError as exc:
                failed = (p, exc.strerror or str(exc))
                break
        if failed is not None:
            for s in socks:
                s.close()
            out.unavailable.append(failed)
            continue
        if not out.rcvbuf_reported:
            out.rcvbuf_bytes, out.rcvbuf_reported = effective_rcvbuf(socks[0])
        out.pairs.append((port, socks[0], socks[1]))
    return out


def ephemeral_range(path: Path = EPHEMERAL_RANGE_PATH) -> tuple[int, int] | None:
    """The kernel's ephemeral (local) port range, None where there is no such file."""
    try:
        lo, hi = path.read_text().split()[:2]
        return int(lo), int(hi)
    except (OSError, ValueError):
        return None


def overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]
