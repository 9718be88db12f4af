"""The naive baseline for RTP ingest: what a Python user would write first. One thread per call, a
blocking `recv` per packet, the RTP header parsed with `struct`, μ-law decoded per packet (lookup
table), `scipy.signal.resample_poly` 8 → 16 kHz per 20 ms packet, and 8000-byte chunks cut from a
bytearray. It does not forward the chunks anywhere (spoofwatch also streams them to the upstream), so
the comparison favours the baseline.

    python benchmarks/naive_rtp_receiver.py --port-base 30000 --calls 100

Prints one JSON line {"ready": true} once every port is bound, and on SIGTERM or SIGINT one JSON
line with the packets and chunks it handled.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import struct
import sys
import threading

import numpy as np
from scipy.signal import resample_poly


def ulaw_table() -> np.ndarray:
    """G.711 μ-law byte → int16 sample (the classic expansion)."""
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    t = ((u & 0x0F) << 3) + 0x84
    t <<= (u & 0x70) >> 4
    return np.where(u & 0x80, 0x84 - t, t - 0x84).astype(np.int16)


ULAW = ulaw_table()
HEADER = struct.Struct("!BBHII")


class Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.packets = 0
        self.chunks = 0


def leg(sock: socket.socket, stats: Stats, stop: threading.Event) -> None:
    buf = bytearray()
    packets = chunks = 0
    while not stop.is_set():
        try:
            data = sock.recv(2048)
        except TimeoutError:
            continue
        if len(data) < 12:
            continue
        b0, _, _seq, _ts, _ssrc = HEADER.unpack_from(data)
        payload = data[12 + 4 * (b0 & 0x0F):]
        pcm = ULAW[np.frombuffer(payload, dtype=np.uint8)]  # per-packet decode
        out = resample_poly(pcm.astype(np.float64), 2, 1)  # per-packet resample, 160 → 320 samples
        buf += np.clip(out, -32768, 32767).astype(np.int16).tobytes()
        while len(buf) >= 8000:
            _chunk = bytes(buf[:8000])
            del buf[:8000]
            chunks += 1
        packets += 1
    with stats.lock:
        stats.packets += packets
        stats.chunks += chunks


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port-base", type=int, required=True, help="call k listens on port-base + 2k")
    p.add_argument("--calls", type=int, required=True)
    args = p.parse_args()
    stop, stats = threading.Event(), Stats()
    socks = []
    for k in range(args.calls):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.bind((args.host, args.port_base + 2 * k))
        s.settimeout(0.5)
        socks.append(s)
    threads = [threading.Thread(target=leg, args=(s, stats, stop), daemon=True) for s in socks]
    for t in threads:
        t.start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    print(json.dumps({"ready": True, "calls": args.calls}), flush=True)
    done.wait()
    stop.set()
    for t in threads:
        t.join(timeout=5)
    print(json.dumps({"packets": stats.packets, "chunks": stats.chunks}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
