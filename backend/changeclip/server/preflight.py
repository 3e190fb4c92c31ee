"""File checks of a submitted job, done before it is queued (HTTP 400 with the path).

The protocol's validation checks types and values; these checks look at the file
system of the server's machine: inputs must exist and be readable, the output
folder (or explicit output files) must be creatable and writable, and existing
outputs are refused unless ``overwrite`` is set. Nothing is created or modified.
"""

from __future__ import annotations

import os
import stat

from changeclip.errors import InputError
from changeclip.protocol import DetectParams


class PreflightError(InputError):
    """A path of a job cannot be used. ``field`` names the parameter, ``path`` the path."""

    def __init__(self, field_name: str, path: str, message: str) -> None:
        super().__init__(f"{field_name}: {path!r}: {message}")
        self.field = field_name
        self.path = path
        self.message = message


def preflight(params: DetectParams) -> None:
    """Check every path of ``params`` against the file system.

    Args:
        params: validated job parameters.

    Raises:
        PreflightError: the first path that cannot be used, with what to do about it.
    """
    _readable_file("before", params.before)
    _readable_file("after", params.after)
    if params.weights is not None:
        _readable_file("weights", params.weights)
    if params.tagger_weights is not None:
        _readable_file("tagger_weights", params.tagger_weights)
    _absolute("output_dir", params.output_dir)
    st = _stat("output_dir", params.output_dir)
    if st is not None:
        if not stat.S_ISDIR(st.st_mode):
            raise PreflightError("output_dir", params.output_dir, "exists and is not a folder; choose a folder path")
        if not os.access(params.output_dir, os.W_OK | os.X_OK):
            raise PreflightError("output_dir", params.output_dir, "folder is not writable by the server's user")
    else:
        _creatable("output_dir", params.output_dir)
    outputs = params.output_paths()
    explicit = {"mask": "mask_path", "probability": "probability_path", "polygons": "polygons_path"}
    for key, path in outputs.items():
        if path is None:
            continue
        field_name = explicit.get(key, "output_dir")
        if getattr(params, field_name, None) is None:
            field_name = "output_dir"
        _absolute(field_name, path)
        st = _stat(field_name, path)
        if st is not None:
            if stat.S_ISDIR(st.st_mode):
                raise PreflightError(field_name, path, "is a folder, but an output file of this name is needed")
            if not params.overwrite:
                raise PreflightError(field_name, path, "output exists; set overwrite to replace it, "
                                     "or choose another output folder")
        parent = os.path.dirname(path)
        pst = _stat(field_name, parent)
        if pst is not None:
            if not stat.S_ISDIR(pst.st_mode) or not os.access(parent, os.W_OK | os.X_OK):
                raise PreflightError(field_name, path, f"its folder {parent!r} is not a writable folder")
        else:
            _creatable(field_name, parent)


def _absolute(field_name: str, path: str) -> None:
    if "\x00" in path:
        raise PreflightError(field_name, path, "contains a NUL character")
    if not os.path.isabs(path):
        raise PreflightError(field_name, path, "must be an absolute path (the server's working folder is not "
                             "the client's)")


def _stat(field_name: str, path: str) -> os.stat_result | None:
    """``os.stat`` of ``path``; ``None`` if it does not exist; PreflightError if unusable."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        raise PreflightError(field_name, path, "a part of this path is a file, not a folder") from None
    except (OSError, ValueError) as exc:  # ValueError: unencodable characters
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise PreflightError(field_name, path, f"cannot be accessed: {reason}") from None


def _readable_file(field_name: str, path: str) -> None:
    _absolute(field_name, path)
    st = _stat(field_name, path)
    if st is None:
        raise PreflightError(field_name, path, "does not exist")
    if stat.S_ISDIR(st.st_mode):
        raise PreflightError(field_name, path, "is a folder; give the path of a file")
    if not os.access(path, os.R_OK):
        raise PreflightError(field_name, path, "is not readable by the server's user")


def _creatable(field_name: str, path: str) -> None:
    """The nearest existing ancestor of ``path`` must be a writable folder."""
    ancestor = os.path.dirname(os.path.normpath(path))
    while True:
        st = _stat(field_name, ancestor)
        if st is not None:
            break
        parent = os.path.dirname(ancestor)
        if parent == ancestor:
            raise PreflightError(field_name, path, "no existing folder above it")
        ancestor = parent
    if not stat.S_ISDIR(st.st_mode):
        raise PreflightError(field_name, path, f"cannot be created: {ancestor!r} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise PreflightError(field_name, path, f"cannot be created: folder {ancestor!r} is not writable")
