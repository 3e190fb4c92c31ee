"""File-system checks of a detection job, before any work; nothing is created or modified.

One set of checks for both callers:

* :func:`changeclip.pipeline.run_detection` runs :func:`preflight` first (command line,
  Processing, and every job the server runs): inputs must exist, existing outputs are
  refused unless ``overwrite`` is set, output folders must be creatable. It returns the
  folders the run will have to create (made only once the inputs are known to be good).
* the job server's submit endpoint runs it with ``server=True`` before a job is queued,
  answering HTTP 400 with the path: then every path must also be absolute (the server's
  working folder is not the client's) and the weights files must exist too (the pipeline
  leaves those to the weights loader, which reports them as model errors, exit code 3).

What an output may replace (never a device, FIFO, folder, link, an input of the job, a system
folder's file, or another output of the same job) is :mod:`changeclip.output_safety`'s rule,
applied here for every caller.

Permission checks use ``os.access``, which the super-user always passes;
:func:`confirm_writable` (used by the pipeline right before it writes) really creates and
removes a probe file, so a folder that cannot be written fails before the model is loaded.
"""

from __future__ import annotations

import os
import stat
import tempfile
from xml.etree import ElementTree  # nosec B405 - see _check_vrt_sources

from changeclip import output_safety
from changeclip.errors import InputError
from changeclip.protocol import DetectParams

_EXPLICIT = {"mask": "mask_path", "probability": "probability_path", "polygons": "polygons_path"}


class PreflightError(InputError):
    """A path of a job cannot be used. ``field`` names the parameter, ``path`` the path.

    ``str()`` is ``"<field>: '<path>': <message>"`` unless a complete sentence is given as
    ``text`` (used where the command line has a long-standing wording).
    """

    def __init__(self, field_name: str, path: str, message: str, text: str | None = None) -> None:
        super().__init__(text or f"{field_name}: {path!r}: {message}")
        self.field = field_name
        self.path = path
        self.message = message


def preflight(params: DetectParams, server: bool = False) -> list[str]:
    """Check every path of ``params`` against the file system, without touching it.

    Args:
        params: Validated job parameters.
        server: Apply the job server's stricter rules (absolute paths, weights files exist,
            GDAL ``/vsi`` paths are refused as not existing).

    Returns:
        The output folders that do not exist yet, parents first (the run creates them).

    Raises:
        PreflightError: The first path that cannot be used, with what to do about it.
    """
    for field_name in ("before", "after"):
        path = getattr(params, field_name)
        if server or not path.startswith("/vsi"):
            _readable_file(field_name, path, server, raster=True)
    if server:
        for field_name in ("weights", "tagger_weights"):
            if getattr(params, field_name) is not None:
                _readable_file(field_name, getattr(params, field_name), server, raster=False)
    missing: list[str] = []
    out_dir = _checked_path("output_dir", params.output_dir, server)
    for out in output_safety.outputs_of(params):
        _checked_path(out.field, out.path, server)
    try:
        output_safety.check_job(params)
    except output_safety.OutputPathError as exc:
        raise PreflightError(exc.field, exc.path, exc.message) from None
    st = _stat("output_dir", out_dir)
    if st is not None:
        if not stat.S_ISDIR(st.st_mode):
            raise PreflightError("output_dir", out_dir, "exists and is a file, not a folder; choose a folder path")
        _writable_folder("output_dir", out_dir, out_dir)
    else:
        missing += _creatable("output_dir", out_dir)
    for key, raw in params.output_paths().items():
        if raw is None:
            continue
        field_name = _EXPLICIT.get(key, "output_dir")
        if getattr(params, field_name, None) is None:
            field_name = "output_dir"
        path = _checked_path(field_name, raw, server)
        st = _stat(field_name, path)
        if st is not None:
            if stat.S_ISDIR(st.st_mode):
                raise PreflightError(field_name, path, "is a folder, but an output file of this name is needed")
            if not params.overwrite:
                raise PreflightError(field_name, path, "already exists; pass --overwrite (overwrite: true) to "
                                     "replace it, or choose another output folder")
        parent = os.path.dirname(path)
        pst = _stat(field_name, parent)
        if pst is not None:
            if not stat.S_ISDIR(pst.st_mode):
                raise PreflightError(field_name, path, f"its folder {parent!r} is a file, not a folder")
            _writable_folder(field_name, path, parent)
        else:
            missing += _creatable(field_name, parent)
    return sorted(dict.fromkeys(missing), key=len)


def confirm_writable(params: DetectParams, missing: list[str]) -> None:
    """Create and remove a probe file in the nearest existing folder above every output.

    ``os.access`` cannot tell (the super-user passes it; ACLs, network shares); the pipeline
    calls this right before it writes, so that failure is reported as "not writable".

    Raises:
        PreflightError: A folder refused the probe file.
    """
    folders = {os.path.dirname(os.path.abspath(p)) for p in params.output_paths().values() if p}
    for folder in sorted(folders):
        probe = folder
        while probe in missing or not os.path.exists(probe):
            probe = os.path.dirname(probe)
        try:
            fd, name = tempfile.mkstemp(prefix=".changeclip-probe-", dir=probe)
            os.close(fd)
            os.remove(name)
        except OSError as exc:
            raise PreflightError("output_dir", folder, "not writable",
                                 f"the output folder {folder!r} is not writable ({exc.strerror}); choose a "
                                 "folder you can write to") from None


def _checked_path(field_name: str, path: str, server: bool) -> str:
    """``path`` as checked: NUL-free, absolute where the server requires it, else made absolute."""
    if "\x00" in path:
        raise PreflightError(field_name, path, "contains a NUL character")
    if not _is_utf8(path):
        raise PreflightError(field_name, path, "contains bytes that are not valid UTF-8 (shown as \\udcXX "
                             "escapes), which GDAL cannot open; rename the file or folder to a UTF-8 name")
    if os.path.isabs(path):
        return path
    if server:
        raise PreflightError(field_name, path, "must be an absolute path (the server's working folder is not "
                             "the client's)")
    return os.path.abspath(path)


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


def _readable_file(field_name: str, path: str, server: bool, raster: bool) -> None:
    checked = _checked_path(field_name, path, server)
    st = _stat(field_name, checked)
    if st is None:
        if raster:
            raise PreflightError(field_name, path, "does not exist",
                                 f"{field_name} raster not found: {path!r} does not exist; check the path (it "
                                 "must exist on the machine that runs the backend)")
        raise PreflightError(field_name, path, "does not exist")
    if stat.S_ISDIR(st.st_mode):
        raise PreflightError(field_name, path, "is a folder; give the path of a file")
    if not stat.S_ISREG(st.st_mode):
        raise PreflightError(field_name, path, f"is not a regular file but {file_kind(st.st_mode)}, which could "
                             "block the run forever; give the path of a raster file (a VRT file is fine)")
    if not os.access(checked, os.R_OK):
        raise PreflightError(field_name, path, "is not readable by the backend's user")
    if raster:
        _check_vrt_sources(field_name, path, checked, depth=0)


_VRT_MAX_BYTES = 16 << 20
"""VRT files larger than this (16 MiB) are left to GDAL unchecked."""
_VRT_MAX_DEPTH = 8
"""How deep VRTs nested in VRTs are followed."""


def _check_vrt_sources(field_name: str, path: str, vrt: str, depth: int) -> None:
    """The local sources of a VRT (and of VRTs in it) must not be FIFOs, devices or sockets either:
    a VRT opens without touching them, and its first read would then block the run for good.

    Sources GDAL resolves itself (``/vsi…`` paths, subdataset names, missing files) are left to it.
    """
    try:
        with open(vrt, "rb") as handle:
            text = handle.read(_VRT_MAX_BYTES + 1)
    except OSError:
        return
    if len(text) > _VRT_MAX_BYTES or not text.lstrip().startswith(b"<VRTDataset"):
        return
    try:
        # Justification: a local file the user named, size-bounded; expat refuses entity expansion bombs.
        root = ElementTree.fromstring(text)  # nosec B314
    except ElementTree.ParseError:
        return  # GDAL says what is wrong with it
    folder = os.path.dirname(vrt)
    for element in (*root.iter("SourceFilename"), *root.iter("SourceDataset")):
        name = (element.text or "").strip()
        if not name or name.startswith("/vsi"):
            continue
        source = os.path.join(folder, name) if element.get("relativeToVRT") == "1" else name
        try:
            st = os.stat(source)
        except (OSError, ValueError):
            continue
        if not stat.S_ISREG(st.st_mode) and not stat.S_ISDIR(st.st_mode):
            raise PreflightError(field_name, path, f"is a VRT whose source {source!r} is not a regular file but "
                                 f"{file_kind(st.st_mode)}, which would block the run forever at its first "
                                 "read; point the VRT at raster files")
        if stat.S_ISREG(st.st_mode) and source.lower().endswith(".vrt") and depth < _VRT_MAX_DEPTH:
            _check_vrt_sources(field_name, path, source, depth + 1)


def regular_file_problem(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` cannot be read as a regular file (``"does not exist"``, ``"is not a regular
    file but a character device"`` ...), or ``None`` when it can be. Follows symbolic links."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "does not exist"
    except (OSError, ValueError) as exc:
        return f"cannot be accessed: {exc.strerror if isinstance(exc, OSError) and exc.strerror else exc}"
    if stat.S_ISDIR(st.st_mode):
        return "is a folder, not a file"
    if not stat.S_ISREG(st.st_mode):
        return f"is not a regular file but {file_kind(st.st_mode)}"
    return None


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words (``a FIFO (named pipe)``, ``a character device`` ...)."""
    for test, kind in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return kind
    return "another kind of special file"


def _is_utf8(path: str) -> bool:
    """Whether ``path`` is valid Unicode (command-line bytes that are not UTF-8 arrive as lone surrogates)."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _writable_folder(field_name: str, path: str, folder: str) -> None:
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PreflightError(field_name, path, f"its folder {folder!r} is not writable by the backend's user; "
                             "choose a folder you can write to")


def _creatable(field_name: str, path: str) -> list[str]:
    """The folders to create for ``path``; the nearest existing ancestor must be a writable folder."""
    missing = [os.path.normpath(path)]
    ancestor = os.path.dirname(missing[0])
    while True:
        st = _stat(field_name, ancestor)
        if st is not None:
            break
        parent = os.path.dirname(ancestor)
        if parent == ancestor:
            raise PreflightError(field_name, path, "no existing folder above it")
        missing.append(ancestor)
        ancestor = parent
    if not stat.S_ISDIR(st.st_mode):
        raise PreflightError(field_name, path, f"cannot be created: {ancestor!r} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise PreflightError(field_name, path, f"cannot be created: folder {ancestor!r} is not writable")
    return missing
