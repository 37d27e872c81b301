"""Where the faces are: the CenterFace detector on every frame, MediaPipe's mesh on each face, tracks between frames."""
