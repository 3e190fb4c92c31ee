"""The plugin's error hierarchy: every message is fit to show to a user as is."""

from __future__ import annotations


class ChangeClipPluginError(Exception):
    """Base class of errors the plugin shows to the user (message bar, Processing log)."""


class ConfigError(ChangeClipPluginError):
    """A setting or parameter is wrong; the message names it and the fix."""


class BackendUnavailable(ChangeClipPluginError):
    """No backend could be reached or started; the message says what is missing.

    Attributes:
        stderr_tail: the last lines the backend process wrote to stderr, if it ran.
    """

    def __init__(self, message: str, stderr_tail: str = "") -> None:
        super().__init__(message)
        self.stderr_tail = stderr_tail


class BackendError(ChangeClipPluginError):
    """The backend answered a request with an error (HTTP status and its detail)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class JobFailed(ChangeClipPluginError):
    """A detection job ended in the ``failed`` state; the message is the backend's reason."""


class JobCancelledError(ChangeClipPluginError):
    """A detection job was cancelled by the user."""


class LayerNotSupported(ChangeClipPluginError):
    """A layer cannot be handed to the backend (and cannot be exported); says why and what to do."""
