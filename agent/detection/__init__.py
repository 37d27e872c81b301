"""Where the faces are: the CenterFace detector on every frame, MediaPipe's mesh on each face, tracks between frames."""

from agent.detection.mediapipe_import import defer_drawing_modules

defer_drawing_modules()
