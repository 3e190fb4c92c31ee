"""Which paths a run may write its outputs to, checked before any work.

An output may only ever take the place of nothing, or of a regular file that looks like an
output of ours (a TIFF for the mask and probability, a GeoPackage for the polygons, a JSON
object for the summary; an empty file counts as nothing). Refused, whatever ``overwrite`` says:

* device nodes, FIFOs, sockets, folders and symbolic links at an output path;
* any input of the same job (the same path once resolved, or the same file through another
  name: equal device and inode), including every file GDAL reads for an input raster
  (its ``.aux.xml``, ``.ovr``, a VRT's sources: see :func:`check_not_input_files`);
* paths inside system folders (``/dev``, ``/proc``, ``/etc``, ``/usr``, ...);
* two outputs of one job on the same file (``mask_path`` = ``probability_path``, or an
  explicit output equal to ``OUTPUT_DIR/summary.json``).

This module is **standard library only**: the backend's preflight (command line, every server
job, the pipeline) and the QGIS plugin's parameter checks use the very same file
(``changeclip_qgis/core/output_safety.py`` is a link to it, copied into the plugin zip).
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

_POSIX_SYSTEM_DIRS = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/run",
                      "/sbin", "/sys", "/usr", "/var/lib", "/var/log", "/var/run", "/System", "/private/etc")
"""Folders no run writes into (Linux and macOS); compared with the resolved output path."""

_MAGIC = {
    "tiff": (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"),
    "gpkg": (b"SQLite format 3\x00",),
}
_KIND_TEXT = {"tiff": "a GeoTIFF", "gpkg": "a GeoPackage", "json": "a JSON summary"}
KIND_OF_OUTPUT = {"mask": "tiff", "probability": "tiff", "polygons": "gpkg", "summary": "json",
                  "polygons_matching": "gpkg", "mask_matching": "tiff"}
"""What each output of a run is (keys of ``DetectParams.output_paths()``)."""


class OutputPathError(ValueError):
    """An output path cannot be used. ``field`` names the parameter, ``path`` the path."""

    def __init__(self, field_name: str, path: str, message: str) -> None:
        super().__init__(f"{field_name}: {path!r}: {message}")
        self.field = field_name
        self.path = path
        self.message = message


@dataclass(frozen=True)
class Output:
    """One output of a run: the parameter that names it, what it is, and its path."""

    field: str
    kind: str
    path: str


_EXPLICIT = {"mask": "mask_path", "probability": "probability_path", "polygons": "polygons_path"}
_INPUT_FIELDS = ("before", "after", "weights", "tagger_weights", "vocabulary", "describe_weights")


def outputs_of(params: Any) -> list[Output]:
    """The outputs of a job (a ``protocol.DetectParams``), each with the parameter that names it."""
    outs = []
    for key, path in params.output_paths().items():
        if path is None:
            continue
        field_name = _EXPLICIT.get(key, "output_dir")
        if getattr(params, field_name, None) is None:
            field_name = "output_dir"
        outs.append(Output(field_name, KIND_OF_OUTPUT[key], path))
    return outs


def inputs_of(params: Any) -> dict[str, str | None]:
    """The input files of a job (a ``protocol.DetectParams``) by parameter name."""
    return {name: getattr(params, name, None) for name in _INPUT_FIELDS}


def check_job(params: Any) -> None:
    """:func:`check_outputs` for a job (a ``protocol.DetectParams``).

    Raises:
        OutputPathError: The first output that cannot be used.
    """
    check_outputs(outputs_of(params), inputs_of(params), bool(params.overwrite))


def system_dirs() -> tuple[str, ...]:
    """The system folders of this platform (resolved), into which no output may go."""
    if sys.platform == "win32":  # pragma: no cover - checked on Linux only
        names = ("SystemRoot", "ProgramFiles", "ProgramFiles(x86)", "ProgramData")
        return tuple(os.path.normcase(os.path.realpath(os.environ[n])) for n in names if os.environ.get(n))
    return _POSIX_SYSTEM_DIRS


def resolved(path: str) -> str:
    """``path`` absolute with every folder symlink resolved, the last component kept as it is.

    The last component is not followed: a symbolic link at an output path is refused, never
    written through.
    """
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.normcase(os.path.join(os.path.realpath(folder), name))


def check_outputs(outputs: Sequence[Output], inputs: Mapping[str, str | None], overwrite: bool) -> None:
    """Refuse output paths that must not be written (see the module docstring).

    An existing output that is acceptable but ``overwrite`` is false is left to the caller
    (it has its own wording for "already exists").

    Args:
        outputs: Every output of the run.
        inputs: The run's input files by parameter name (``before``, ``after``, ``weights``,
            ...); None and GDAL ``/vsi`` paths are skipped.
        overwrite: Whether existing outputs may be replaced.

    Raises:
        OutputPathError: The first output that cannot be used, with what to do about it.
    """
    input_ids = _input_identities(inputs)
    seen: dict[str, Output] = {}
    seen_ids: dict[tuple[int, int], Output] = {}
    for out in outputs:
        if "\x00" in out.path:
            raise OutputPathError(out.field, out.path, "contains a NUL character")
        real = resolved(out.path)
        _check_not_system(out, real)
        other = seen.get(real)
        if other is not None:
            raise OutputPathError(out.field, out.path, f"is the same file as {_describe(other)}; give each output "
                                  "its own file name")
        seen[real] = out
        try:
            st = os.lstat(out.path)
        except (FileNotFoundError, NotADirectoryError):  # nothing there (a bad folder is the caller's to report)
            continue
        except (OSError, ValueError) as exc:  # ValueError: a NUL character or an unencodable name
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise OutputPathError(out.field, out.path, f"cannot be accessed: {reason}") from None
        _check_kind(out, st)
        ident = (st.st_dev, st.st_ino)
        for name, (in_real, in_ident) in input_ids.items():
            if real == in_real or ident == in_ident:
                raise OutputPathError(out.field, out.path, f"is the {name} input of this job; an output never "
                                      "replaces an input: choose another file name")
        other = seen_ids.get(ident)
        if other is not None:
            raise OutputPathError(out.field, out.path, f"is the same file as {_describe(other)} (a hard link); give "
                                  "each output its own file")
        seen_ids[ident] = out
        if overwrite and st.st_size > 0 and not looks_like(out.path, out.kind):
            raise OutputPathError(out.field, out.path, f"exists and is not {_KIND_TEXT[out.kind]} written by "
                                  "ChangeCLIP, so it is not replaced even with overwrite; move it away or choose "
                                  "another file name")


def check_not_input_files(outputs: Sequence[Output], files: Iterable[str], role: str) -> None:
    """Refuse outputs that are one of ``files`` (every file GDAL reads for the ``role`` input).

    Raises:
        OutputPathError: An output is one of those files (same resolved path or same inode).
    """
    known: dict[object, str] = {}
    for f in files:
        if not f or f.startswith("/vsi"):
            continue
        known[resolved(f)] = f
        try:
            st = os.stat(f)
        except OSError:
            continue
        known[(st.st_dev, st.st_ino)] = f
    for out in outputs:
        hit = known.get(resolved(out.path))
        if hit is None:
            try:
                st = os.lstat(out.path)
            except OSError:
                continue
            hit = known.get((st.st_dev, st.st_ino))
        if hit is not None:
            raise OutputPathError(out.field, out.path, f"is a file GDAL reads for the {role} input ({hit}); an "
                                  "output never replaces an input: choose another file name")


def looks_like(path: str, kind: str) -> bool:
    """Whether the regular file at ``path`` starts like an output of ``kind`` (tiff, gpkg, json)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(64)
    except OSError:
        return False
    if kind == "json":
        return head.lstrip()[:1] == b"{"
    return head.startswith(_MAGIC[kind])


def _check_not_system(out: Output, real: str) -> None:
    for folder in system_dirs():
        if real == folder or real.startswith(folder.rstrip(os.sep) + os.sep):
            raise OutputPathError(out.field, out.path, f"is inside the system folder {folder}; outputs go into a "
                                  "folder of your own")


def _check_kind(out: Output, st: os.stat_result) -> None:
    mode = st.st_mode
    if stat.S_ISREG(mode):
        return
    if stat.S_ISLNK(mode):
        target = os.readlink(out.path)
        what = f"is a symbolic link (to {target}); an output never replaces a link or writes through it"
    elif stat.S_ISDIR(mode):
        what = "is a folder, but an output file of this name is needed"
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        what = "is a device, not a file; an output is never written to a device"
    elif stat.S_ISFIFO(mode):
        what = "is a FIFO (named pipe), not a file"
    elif stat.S_ISSOCK(mode):
        what = "is a socket, not a file"
    else:
        what = "is not a regular file"
    raise OutputPathError(out.field, out.path, f"{what}: choose another file name")


def _input_identities(inputs: Mapping[str, str | None]) -> dict[str, tuple[str, tuple[int, int] | None]]:
    """``{name: (resolved path, (device, inode) or None)}`` of the inputs on this file system."""
    out: dict[str, tuple[str, tuple[int, int] | None]] = {}
    for name, path in inputs.items():
        if not path or path.startswith("/vsi") or "\x00" in path:
            continue
        try:
            st = os.stat(path)
            ident: tuple[int, int] | None = (st.st_dev, st.st_ino)
        except (OSError, ValueError):
            ident = None
        out[name] = (os.path.normcase(os.path.realpath(path)), ident)
    return out


def _describe(out: Output) -> str:
    return f"{out.field} ({out.path})" if out.kind != "json" else f"the summary ({out.path})"
