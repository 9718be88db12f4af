"""libopus through ctypes: Opus decoded straight to 16 kHz, the rate the detector takes.

Through PyAV (FFmpeg's libopus wrapper) Opus always comes out at 48 kHz, and each 20 ms frame costs an
`av.Packet`, an `av.AudioFrame` and a `to_ndarray` on top of the decode. libopus itself decodes to
8/12/16/24/48 kHz: at 16 kHz the decode is cheaper (CELT stops at the 8 kHz band edge; SILK needs no
upsampling), no resampling is left for the leg, and the samples land in a reused buffer. It is about half
the time of aiortc's decoder (48 kHz stereo) on the project's machines, and ~18 KiB of state per track.

The system's libopus (`libopus.so.0`, Debian package libopus0) is used; without it `OpusDecoder.available()`
is False and decode.py falls back to PyAV.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

import numpy as np

from daemon.ingest.whip.media import Pcm

RATE = 16000
#: the longest Opus packet is 120 ms
_MAX_SAMPLES = RATE * 120 // 1000


@functools.cache
def _lib() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("opus") or "libopus.so.0"
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        return None
    lib.opus_decoder_create.restype = ctypes.c_void_p
    lib.opus_decoder_create.argtypes = [ctypes.c_int32, ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
    lib.opus_decode.restype = ctypes.c_int
    lib.opus_decode.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int32, ctypes.c_void_p, ctypes.c_int,
                                ctypes.c_int]
    lib.opus_decoder_destroy.restype = None
    lib.opus_decoder_destroy.argtypes = [ctypes.c_void_p]
    return lib


class OpusDecoder:
    """One Opus stream → 16 kHz s16 with `channels` (1 or 2) interleaved; `close()` frees libopus' state."""

    @staticmethod
    def available() -> bool:
        return _lib() is not None

    def __init__(self, channels: int) -> None:
        lib = _lib()
        if lib is None:
            raise RuntimeError("libopus (libopus.so.0) is not installed")
        self._lib = lib
        self.channels = channels
        err = ctypes.c_int(0)
        self._state: int | None = lib.opus_decoder_create(RATE, channels, ctypes.byref(err))
        if not self._state or err.value != 0:
            raise RuntimeError(f"opus_decoder_create failed ({err.value})")
        self._buf = np.empty(_MAX_SAMPLES * channels, np.int16)
        self._ptr = self._buf.ctypes.data

    def decode(self, data: bytes) -> Pcm:
        """One packet → its samples (a copy; interleaved when stereo). ValueError for a corrupt packet."""
        if self._state is None:
            raise RuntimeError("decoder closed")
        n = self._lib.opus_decode(self._state, data, len(data), self._ptr, _MAX_SAMPLES, 0)
        if n < 0:
            raise ValueError(f"opus_decode: error {n}")
        out: Pcm = self._buf[:n * self.channels].copy()
        return out

    def close(self) -> None:
        if self._state is not None:
            self._lib.opus_decoder_destroy(self._state)
            self._state = None

    def __del__(self) -> None:
        self.close()
