"""Typed errors. Every user-facing failure is one of these, with a one-line message that names
the offending input; the CLI turns them into exit code 2 and the server into HTTP 4xx."""


class MiniCPMVError(Exception):
    """Base class of every error this package raises on bad input."""


class ImageError(MiniCPMVError, ValueError):
    """An image could not be read: missing, empty, truncated, corrupt, unknown format or too large."""


class PromptError(MiniCPMVError, ValueError):
    """Messages, prompt text or per-call options are malformed (roles, tag/image count, length...)."""


class PromptTooLongError(PromptError):
    """The tokenised prompt exceeds the allowed length; it is never cut through an image span."""


class ConfigError(MiniCPMVError, ValueError):
    """A config.json / preprocessor_config.json is unsupported or inconsistent."""


class CheckpointError(MiniCPMVError, ValueError):
    """A checkpoint folder is not a MiniCPM-V checkpoint, or its files are missing or broken."""


class OutputError(MiniCPMVError, OSError):
    """An output cannot be written: its folder is a file, missing and not creatable, read-only,
    or the disk is full."""
