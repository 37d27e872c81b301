"""MediaPipe's and TensorFlow Lite's own log lines, kept off the terminal unless ``-v`` is given.

They write from C++ straight to file descriptor 2 ("W0000 00:00:... face_landmarker_graph.cc:181]
...", "INFO: Created TensorFlow Lite XNNPACK delegate"), past Python's logging and past
GLOG_minloglevel. While a command runs, descriptor 2 is a pipe: a thread passes everything on to
the real stderr except those lines. Progress bars (partial lines) pass at once.
"""

from __future__ import annotations

import os
import re
import sys
import threading

_TERMINAL = {"stderr": None}  # whether stderr was a terminal before the filter took descriptor 2


def stderr_is_terminal() -> bool:
    """Whether the user's stderr is a terminal (progress bars), also while the filter runs."""
    known = _TERMINAL["stderr"]
    return sys.stderr.isatty() if known is None else known


NATIVE = re.compile(rb"^(WARNING: Logging before InitGoogle|INFO: Created TensorFlow Lite|[WIEF]\d{4} [\d:.]+ +\d+ \S+:\d+\])")


class QuietNativeLogs:
    def __init__(self):
        self._saved = None
        self._thread = None

    def __enter__(self):
        _TERMINAL["stderr"] = os.isatty(2)
        try:
            sys.stderr.flush()
            self._saved = os.dup(2)
            read, write = os.pipe()
            os.dup2(write, 2)
            os.close(write)
        except OSError:  # no usable descriptor 2: nothing to filter
            self._saved = None
            return self
        self._thread = threading.Thread(target=self._pump, args=(read,), name="native-log-filter", daemon=True)
        self._thread.start()
        return self

    def _pump(self, read: int):
        pending = b""
        with os.fdopen(read, "rb", buffering=0) as pipe:
            while chunk := pipe.read(65536):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                out = b"".join(line + b"\n" for line in lines if not NATIVE.match(line))
                # A partial line that cannot be the start of a native log line (a progress bar) goes now.
                if pending and not NATIVE.match(pending) and not _could_start_native(pending):
                    out, pending = out + pending, b""
                if out:
                    os.write(self._saved, out)
        if pending and not NATIVE.match(pending):
            os.write(self._saved, pending)

    def __exit__(self, *exc):
        if self._saved is None:
            return False
        sys.stderr.flush()
        os.dup2(self._saved, 2)  # closes the pipe's last writer: the thread drains it and ends
        self._thread.join(timeout=5)
        os.close(self._saved)
        _TERMINAL["stderr"] = None
        return False


def _could_start_native(partial: bytes) -> bool:
    """True while ``partial`` could still grow into a native log line (wait for the rest of it)."""
    head = partial[:12]
    return (b"WARNING: Logging"[:len(head)] == head or b"INFO: Created"[:len(head)] == head
            or re.match(rb"^[WIEF]\d{0,4}( [\d:.]*)?$", head) is not None)
