"""A restricted unpickler for official (mmengine) ``.pth`` checkpoints.

An mmengine checkpoint is a ``torch.save`` pickle of ``{meta, state_dict, message_hub}``;
``message_hub`` (and possibly ``meta``) holds mmengine objects that ``torch.load`` with
``weights_only=True`` rejects, and loading it with ``weights_only=False`` would run whatever
the pickle names. This module reads such files without executing anything:

* only an allowlist of globals is resolved for real: the ``torch._utils._rebuild_*`` tensor
  constructors, torch storage classes and dtypes, ``collections.OrderedDict``, a few plain
  builtins, numpy arrays/scalars/dtypes, and ``_codecs.encode`` restricted to latin-1;
* any global of an OpenMMLab package (``mmengine``, ``mmcv``, ``mmseg``) becomes an inert
  :class:`Placeholder` that only records its arguments and state;
* every other global (``os.system``, ``builtins.eval``, ``subprocess.Popen``, ...) is refused
  with :class:`~changeclip.errors.ModelError` naming it, before anything is called.

Zip-format checkpoints (torch >= 1.6) are read with :mod:`zipfile` here, so no torch loader
(and never TorchScript) is involved; legacy (pre-1.6) pickles go through ``torch.load`` with
this module's unpickler as its ``pickle_module``.
"""

from __future__ import annotations

import collections
import io
import logging
import pickle  # noqa: S403 - this module *is* the safe wrapper
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from changeclip.errors import ModelError

log = logging.getLogger(__name__)

PLACEHOLDER_PACKAGES = ("mmengine", "mmcv", "mmseg")
"""Top-level packages whose classes are replaced by inert placeholders."""

_TORCH_REBUILD = {"_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter",
                  "_rebuild_parameter_with_state"}
_STORAGE_NAMES = {"UntypedStorage", "FloatStorage", "DoubleStorage", "HalfStorage", "BFloat16Storage",
                  "LongStorage", "IntStorage", "ShortStorage", "CharStorage", "ByteStorage", "BoolStorage"}
_BUILTINS = {"set", "frozenset", "complex", "slice", "range", "bytearray"}


class Placeholder:
    """Inert stand-in for a class or function of an OpenMMLab package found in a checkpoint.

    It never runs any code of the original: construction, ``__setstate__`` and item/append
    operations only record their arguments.

    Attributes:
        pickled_name: ``"module.qualname"`` of the original global.
        args: Positional arguments it was called or constructed with.
        kwargs: Keyword arguments it was constructed with.
        state: What ``__setstate__`` / BUILD gave it.
    """

    pickled_name = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.kwargs = kwargs
        self.state: Any = None
        self.items: dict[Any, Any] = {}
        self.list: list[Any] = []

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items[key] = value

    def append(self, value: Any) -> None:
        """Record an appended element (pickle's APPEND opcode)."""
        self.list.append(value)

    def extend(self, values: Any) -> None:
        """Record appended elements (pickle's APPENDS opcode)."""
        self.list.extend(values)

    def __repr__(self) -> str:
        return f"<placeholder {self.pickled_name}>"


_placeholder_types: dict[str, type[Placeholder]] = {}


def placeholder_type(module: str, name: str) -> type[Placeholder]:
    """The (cached) :class:`Placeholder` subclass standing in for ``module.name``."""
    full = f"{module}.{name}"
    if full not in _placeholder_types:
        _placeholder_types[full] = type(name.rsplit(".", 1)[-1], (Placeholder,),
                                        {"pickled_name": full, "__module__": __name__})
    return _placeholder_types[full]


def _latin1_encode(text: str, encoding: str = "latin1", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for bytes, limited to latin-1."""
    if encoding.lower().replace("-", "").replace("_", "") not in ("latin1", "iso88591"):
        raise ModelError(f"checkpoint asks for _codecs.encode with encoding {encoding!r}; only latin-1 is allowed")
    return text.encode("latin1", errors)


def _resolve(module: str, name: str) -> Any:
    """The object a pickle global may resolve to, or ``ModelError`` if it is not allowed."""
    root = module.split(".", 1)[0]
    if root in PLACEHOLDER_PACKAGES:
        return placeholder_type(module, name)
    if module == "torch._utils" and name in _TORCH_REBUILD and hasattr(torch._utils, name):
        return getattr(torch._utils, name)
    if module == "torch._tensor" and name == "_rebuild_from_type_v2":
        return torch._tensor._rebuild_from_type_v2
    if module == "torch" and name in _STORAGE_NAMES:
        return getattr(torch, name)
    if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
        return getattr(torch, name)
    if (module, name) in (("torch", "Size"), ("torch", "Tensor"), ("torch", "device"),
                          ("torch.nn.parameter", "Parameter")):
        return {"Size": torch.Size, "Tensor": torch.Tensor, "device": torch.device,
                "Parameter": torch.nn.Parameter}[name]
    if (module, name) == ("collections", "OrderedDict"):
        return collections.OrderedDict
    if module in ("builtins", "__builtin__") and name in _BUILTINS:
        return getattr(__import__("builtins"), name)
    if (module, name) == ("_codecs", "encode"):
        return _latin1_encode
    if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name in ("_reconstruct", "scalar"):
        core = getattr(np, "_core", None) or np.core  # numpy 2 renamed core -> _core
        return getattr(core.multiarray, name)
    if (module, name) in (("numpy", "ndarray"), ("numpy", "dtype")):
        return getattr(np, name)
    if module == "numpy.dtypes" and name.endswith("DType") and hasattr(np, "dtypes"):
        dtype_cls = getattr(np.dtypes, name, None)
        if isinstance(dtype_cls, type):
            return dtype_cls
    raise ModelError(
        f"refusing to load: the checkpoint references the global '{module}.{name}', which a weights file "
        "has no reason to contain (only tensors, plain containers and mmengine bookkeeping objects are "
        "allowed). Nothing from the file was executed. Do not use this file unless you trust its origin; "
        "if you do, re-save its 'state_dict' in a trusted environment."
    )


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` is the allowlist of :func:`_resolve`."""

    def find_class(self, module: str, name: str) -> Any:  # noqa: D102 - see class docstring
        return _resolve(module, name)


def load(file: Any, **kwargs: Any) -> Any:
    """``pickle.load`` through :class:`RestrictedUnpickler` (for ``torch.load``'s legacy path)."""
    return RestrictedUnpickler(file, **kwargs).load()


class _ZipUnpickler(RestrictedUnpickler):
    """Restricted unpickler for ``data.pkl`` of a torch zip archive (storages read from the zip)."""

    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(io.BytesIO(data), encoding="utf-8")
        self._archive = archive
        self._prefix = prefix
        self._storages: dict[str, torch.storage.TypedStorage] = {}

    def persistent_load(self, pid: Any) -> Any:
        if not isinstance(pid, tuple) or len(pid) != 5 or pid[0] not in ("storage", b"storage"):
            raise ModelError(f"unexpected persistent id in checkpoint: {str(pid)[:80]}")
        _, storage_type, key, _location, numel = pid
        key = key.decode() if isinstance(key, bytes) else str(key)
        if storage_type is torch.UntypedStorage:
            dtype = torch.uint8
        elif isinstance(storage_type, torch.dtype):
            dtype = storage_type
        else:
            dtype = storage_type.dtype
        if key not in self._storages:
            name = f"{self._prefix}data/{key}"
            try:
                raw = self._archive.read(name)
            except KeyError:
                raise ModelError(f"checkpoint is incomplete: tensor data record {name} is missing") from None
            nbytes = int(numel) * torch._utils._element_size(dtype)
            if len(raw) != nbytes:
                raise ModelError(f"checkpoint is corrupt: record {name} has {len(raw)} bytes, expected {nbytes}")
            untyped = torch.frombuffer(bytearray(raw), dtype=torch.uint8).untyped_storage() if raw else \
                torch.UntypedStorage(0)
            self._storages[key] = torch.storage.TypedStorage(wrap_storage=untyped, dtype=dtype, _internal=True)
        return self._storages[key]


def _load_zip(path: Path) -> Any:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
        if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
            raise ModelError(f"{path} is a TorchScript archive, not a checkpoint; it is not loaded")
        if len(pkl) != 1:
            raise ModelError(f"{path} is a zip file but not a PyTorch checkpoint (no single '<name>/data.pkl')")
        prefix = pkl[0][: -len("data.pkl")]
        order = f"{prefix}byteorder"
        if order in names and archive.read(order).strip() not in (b"little", b""):
            raise ModelError(f"{path} was saved on a big-endian machine; only little-endian checkpoints are supported")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated.*")
            return _ZipUnpickler(archive.read(pkl[0]), archive, prefix).load()


def safe_torch_load(path: str | Path) -> Any:
    """Read a ``torch.save`` file without executing anything (see the module docstring).

    Args:
        path: Checkpoint file (zip format, or legacy pickle format).

    Returns:
        The unpickled object; tensors on the CPU, OpenMMLab objects as :class:`Placeholder`.

    Raises:
        ModelError: missing, truncated or corrupt file, or a forbidden global (named in the
            message; nothing from the file was run).
    """
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"checkpoint {p} does not exist")
    with p.open("rb") as fh:
        head = fh.read(4)
    try:
        if zipfile.is_zipfile(p):
            return _load_zip(p)
        if head.startswith(b"PK"):
            raise ModelError(f"{p} looks like a truncated zip checkpoint (its central directory is missing); "
                             "download or copy it again")
        if not head.startswith(b"\x80"):
            raise ModelError(f"{p} is not a PyTorch checkpoint (neither zip nor pickle format)")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated.*")
            return torch.load(str(p), map_location="cpu", pickle_module=_PickleModule, weights_only=False)
    except ModelError:
        raise
    except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, RuntimeError, ValueError, OSError,
            TypeError, AttributeError, KeyError, IndexError) as exc:
        raise ModelError(f"checkpoint {p} is corrupt or truncated ({type(exc).__name__}: {exc}); "
                         "download or copy it again") from exc


class _PickleModule:
    """The ``pickle_module`` handed to ``torch.load`` for legacy files."""

    __name__ = "changeclip_restricted_pickle"
    Unpickler = RestrictedUnpickler
    load = staticmethod(load)
    UnpicklingError = pickle.UnpicklingError
