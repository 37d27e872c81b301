"""MediaPipe without its plotting helpers: ``mediapipe.tasks.python.vision`` imports its drawing modules,
and they import ``matplotlib.pyplot`` (~40 MB resident, ~0.3 s at start) that the agent never uses.

:func:`defer_drawing_modules` makes those two modules lazy (:class:`importlib.util.LazyLoader`): they
are executed on first attribute access, so code that does draw with them still works.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys

DRAWING_MODULES = frozenset({"mediapipe.tasks.python.vision.drawing_utils",
                             "mediapipe.tasks.python.vision.drawing_styles"})


class _LazyDrawingFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name not in DRAWING_MODULES:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = importlib.util.LazyLoader(spec.loader)
        return spec


def defer_drawing_modules() -> None:
    """Install the finder once, ahead of the standard ones (a no-op once mediapipe is imported)."""
    if not any(isinstance(f, _LazyDrawingFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _LazyDrawingFinder())
