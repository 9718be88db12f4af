"""Exact 250 ms chunks (8000 bytes of 16 kHz mono s16le) from resampled output of any length."""

from __future__ import annotations

import numpy as np

from daemon.audio.codecs import Pcm
from daemon.model import CHUNK_BYTES


class Chunker:
    """push() returns every complete chunk; call flush() at leg end or the last < 250 ms is lost."""

    def __init__(self, chunk_bytes: int = CHUNK_BYTES) -> None:
        if chunk_bytes <= 0 or chunk_bytes % 2:
            raise ValueError("chunk size must be a positive even number of bytes")
        self.chunk_bytes = chunk_bytes
        self._buf = bytearray()

    def push(self, pcm: bytes | Pcm) -> list[bytes]:
        data = pcm.astype("<i2", copy=False).tobytes() if isinstance(pcm, np.ndarray) else pcm
        if len(data) % 2:
            raise ValueError("PCM of odd byte length")
        self._buf += data
        n = len(self._buf) // self.chunk_bytes
        if n == 0:
            return []
        size = self.chunk_bytes
        view = bytes(self._buf[: n * size])
        del self._buf[: n * size]  # bytearray deletes from the front in O(remaining)
        return [view[i * size:(i + 1) * size] for i in range(n)]

    def flush(self) -> bytes | None:
        if not self._buf:
            return None
        tail = bytes(self._buf)
        self._buf.clear()
        return tail

    @property
    def pending_bytes(self) -> int:
        return len(self._buf)
