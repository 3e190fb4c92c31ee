"""The backend's error hierarchy. Every message says what was received and how to fix it."""

from __future__ import annotations


class ChangeClipError(Exception):
    """Base class of every error the backend reports to a user."""

    exit_code = 1


class InputError(ChangeClipError):
    """Bad user input: a file, raster, band mapping, option or output location."""

    exit_code = 2


class ModelError(ChangeClipError):
    """Weights missing, unreadable, of another model, or refused by the safe loader."""

    exit_code = 3


class JobCancelled(ChangeClipError):
    """The run was cancelled; partial outputs have been removed."""

    exit_code = 130
