"""A worker must not outlive its supervisor: if the supervisor is SIGKILLed (or crashes), each worker
gets SIGTERM from the kernel (PR_SET_PDEATHSIG) and drains its calls like at any stop, instead of
holding the shared listeners and RTP ports of a daemon nobody supervises."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal

log = logging.getLogger("spoofwatch.workers")

PR_SET_PDEATHSIG = 1
SUPERVISOR_PID_ENV = "SPOOFWATCH_SUPERVISOR_PID"


def die_with_supervisor(expected_parent: int) -> bool:
    """Ask the kernel for SIGTERM when the parent exits. Returns False when the supervisor is already
    gone (it died before the request took effect): the caller should not start."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            log.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
    except (OSError, AttributeError) as exc:  # not Linux: the supervisor's own stop still covers us
        log.warning("cannot ask to die with the supervisor: %s", exc)
    return os.getppid() == expected_parent
