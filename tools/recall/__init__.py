"""The parts of ``python -m tools.eval_recall`` (tools/eval_recall.py), by concern.

- :mod:`tools.recall.data`: the dataset (WIDER FACE val or any set in its gt.json format) and the
  JPEG round trip every output takes;
- :mod:`tools.recall.metrics`: leaks, the re-encoding calibration, the scene changed outside heads,
  and the figures per face group;
- :mod:`tools.recall.judge`: what dlib's detector and recognizer make of each face;
- :mod:`tools.recall.methods`: anoncam (a user config and the models' manifest) and deface;
- :mod:`tools.recall.report`: summary.md (the README table) and faces.csv.
"""
