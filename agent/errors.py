"""Errors the agent reports to users. Each message says what went wrong and what to do about it."""


class AnoncamError(Exception):
    """Base class: anything the CLI turns into a one-line message and a non-zero exit."""


class ModelError(AnoncamError):
    """A model file is missing, corrupt or cannot be loaded."""


class ImageError(AnoncamError):
    """An input image cannot be read or decoded."""


class ConfigError(AnoncamError):
    """The configuration file is invalid."""
