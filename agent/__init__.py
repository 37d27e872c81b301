"""anoncam: replaces every face in a camera frame with a synthetic one before anything leaves the device."""

__version__ = "0.1.0"
