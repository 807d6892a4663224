"""glibc's allocator, tuned for a process that frees and reallocates the same large tensors on every step.

By default glibc gives each allocation over 128 KiB (a threshold that grows to at most 32 MiB as blocks are freed)
its own mapping and unmaps it when freed, and returns free memory at the top of the heap to the system. A training
step on the CPU allocates and frees hundreds of activation tensors of megabytes each, so each step maps fresh
pages and the kernel zeroes them on first touch: on the SD 1.5 architecture at 256 px this took a quarter of the
step (15 s of 48 s in the kernel). Serving blocks up to 32 MiB from the heap and keeping up to 1 GiB of freed
memory for reuse removes that work; it changes no result, only where memory comes from.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger(__name__)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, from glibc's malloc.h
MMAP_THRESHOLD = 32 << 20  # glibc's upper limit for this setting on 64-bit systems
TRIM_THRESHOLD = 1 << 30


def reuse_freed_memory() -> bool:
    """Ask glibc to keep freed memory for reuse; False where the C library is not glibc (nothing to tune)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    done = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    log.debug("glibc keeps freed memory for reuse: %s", done)
    return done
