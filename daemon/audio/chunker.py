"""Exact 250 ms chunks (8000 bytes of 16 kHz mono s16le) from resampled output of any length."""

from __future__ import annotations

import numpy as np

from daemon.audio.codecs import Pcm
from daemon.model import CHUNK_BYTES

_LE_INT16 = np.dtype("<i2")


class Chunker:
    """push() returns every complete chunk; call flush() at leg end or the last < 250 ms is lost."""

    def __init__(self, chunk_bytes: int = CHUNK_BYTES) -> None:
        if chunk_bytes <= 0 or chunk_bytes % 2:
            raise ValueError("chunk size must be a positive even number of bytes")
        self.chunk_bytes = chunk_bytes
        self._buf = bytearray()

    def push(self, pcm: bytes | Pcm) -> list[bytes]:
        if isinstance(pcm, np.ndarray):  # appended through the buffer protocol: no bytes copy first
            if pcm.dtype != _LE_INT16 or not pcm.flags.c_contiguous:  # (soxr's output already is)
                pcm = np.ascontiguousarray(pcm.astype(_LE_INT16))
            self._buf += pcm.data
        elif len(pcm) % 2:
            raise ValueError("PCM of odd byte length")
        else:
            self._buf += pcm
        size = self.chunk_bytes
        n = len(self._buf) // size
        if n == 0:
            return []
        with memoryview(self._buf) as view:  # one copy per chunk, straight out of the buffer
            chunks = [bytes(view[i * size:(i + 1) * size]) for i in range(n)]
        del self._buf[: n * size]  # bytearray deletes from the front in O(remaining)
        return chunks

    def flush(self) -> bytes | None:
        if not self._buf:
            return None
        tail = bytes(self._buf)
        self._buf.clear()
        return tail

    @property
    def pending_bytes(self) -> int:
        return len(self._buf)
