"""The parts of ``python -m tools.evaluate`` (tools/evaluate.py), by concern.

- :mod:`tools.evaluation.methods`: what is evaluated: anoncam's stills pipeline (built from a user
  config and the models' manifest) and the blur / pixelate / erase baselines;
- :mod:`tools.evaluation.identity`: the dlib re-identification and rank-1 judge on held-out CelebA;
- :mod:`tools.evaluation.expression`: the independent FER judge's agreement on FER2013 val;
- :mod:`tools.evaluation.report`: metrics.json, report.md, items.csv, summaries and paired comparisons;
- :mod:`tools.evaluation.grid`: the sample pictures.
"""
