"""Keep freed heap memory mapped (issue 9).

Every super-packet passes through a few 64 KB buffers that are allocated and freed within one
wake-up. With glibc's defaults a free that leaves more than 128 KB at the top of the heap gives the
pages back to the kernel, and the next allocation faults them in again: a T2 receiver took about
14,000 page faults per second that way. Raising the trim threshold keeps them; the heap then stays
at its high-water mark, which for this daemon is a few MB.
"""

from __future__ import annotations

import ctypes

from .logs import get_logger

#: mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2

log = get_logger()


def keep_freed_memory(trim_threshold: int = 32 << 20, top_pad: int = 1 << 20) -> bool:
    """Ask glibc to keep up to ``trim_threshold`` freed bytes; False where there is no mallopt."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt): nothing to tune
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = bool(mallopt(M_TRIM_THRESHOLD, trim_threshold)) and bool(mallopt(M_TOP_PAD, top_pad))
    if not ok:
        log.debug("mallopt refused the heap settings")
    return ok
