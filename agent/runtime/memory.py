"""Process-wide allocator settings, applied at start, before the inference libraries load models."""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_ARENA_MAX = -8  # glibc's mallopt parameter number
MALLOC_ARENAS = 2


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas. glibc gives each thread that allocates an arena of its own (up to
    eight per core), and OpenVINO's, ONNX Runtime's and MediaPipe's worker threads keep in theirs the
    buffers freed after compiling a model and its first inferences. Two arenas take ~45 MB off the
    agent's peak RSS at 720p at the same frame rate (docs/performance.md). A MALLOC_ARENA_MAX in the
    environment is the user's choice and wins; elsewhere than glibc this does nothing. True when set."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_ARENA_MAX, arenas))
