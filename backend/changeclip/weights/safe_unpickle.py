"""A restricted unpickler for official (mmengine) ``.pth`` checkpoints.

An mmengine checkpoint is a ``torch.save`` pickle of ``{meta, state_dict, message_hub,
optimizer, param_schedulers}``; ``message_hub`` holds mmengine ``HistoryBuffer`` objects that
``torch.load`` with ``weights_only=True`` rejects, and loading it with ``weights_only=False``
would run whatever the pickle names. This module reads such files without executing anything:

* only an allowlist of globals is resolved for real: the ``torch._utils._rebuild_*`` tensor
  constructors (wrapped: real storages only, no backward hooks), torch storage classes and
  dtypes, ``collections.OrderedDict``, a few plain builtins, numpy arrays/scalars/dtypes, and
  ``_codecs.encode`` restricted to latin-1;
* any global of an OpenMMLab package (``mmengine``, ``mmcv``, ``mmseg``) becomes an inert
  :class:`Placeholder` type that only records its arguments and state;
* ``builtins.getattr`` resolves to :func:`placeholder_getattr`, which accepts exactly what
  mmengine writes -- a placeholder *type* and a plain attribute name (``HistoryBuffer.min``
  pickles as ``getattr(HistoryBuffer, "min")`` under protocol 2) -- and gives another inert
  placeholder type; on anything else (``getattr(numpy.ndarray, "tofile")`` ...) it refuses;
* the BUILD opcode (``__setstate__`` / attribute setting) is allowed only on placeholders,
  ``OrderedDict`` (its ``_metadata``) and numpy arrays/dtypes, never on a class or function,
  so a pickle cannot patch attributes of torch or of this module;
* every other global (``os.system``, ``builtins.eval``, ``subprocess.Popen``, ...) is refused
  with :class:`~changeclip.errors.ModelError` naming it, before anything is called.

The unpickler is Python's pure-Python one (so BUILD can be checked); it is fast enough, since
the tensor bytes never pass through it. Zip-format checkpoints (torch >= 1.6) are read with
:mod:`zipfile` here, so no torch loader (and never TorchScript) is involved; their tensor
records are memory-mapped copy-on-write, so tensors that are never used (optimizer moments,
two thirds of a training checkpoint) are never read into memory. Legacy (pre-1.6) pickles go
through ``torch.load`` with this module's unpickler as its ``pickle_module``.
"""

from __future__ import annotations

import _compat_pickle
import collections
import collections.abc
import io
import logging
import mmap
import pickle  # noqa: S403 - this module *is* the safe wrapper
import struct
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from changeclip.errors import ModelError

log = logging.getLogger(__name__)

PLACEHOLDER_PACKAGES = ("mmengine", "mmcv", "mmseg")
"""Top-level packages whose classes are replaced by inert placeholders."""

_STORAGE_NAMES = {"UntypedStorage", "FloatStorage", "DoubleStorage", "HalfStorage", "BFloat16Storage",
                  "LongStorage", "IntStorage", "ShortStorage", "CharStorage", "ByteStorage", "BoolStorage"}
_BUILTINS = {"complex", "slice"}
_MAX_ATTRIBUTE_NAME = 100
_REFUSAL_TAIL = ("Nothing from the file was executed. Do not use this file unless you trust its origin; "
                 "if you do, re-save its 'state_dict' in a trusted environment.")


class Placeholder:
    """Inert stand-in for a class or function of an OpenMMLab package found in a checkpoint.

    It never runs any code of the original: construction, ``__setstate__`` and item/append
    operations only record their arguments.

    Attributes:
        pickled_name: ``"module.qualname"`` of the original global.
        pickled_module: Its module (``mmengine.logging.history_buffer``).
        pickled_qualname: Its qualified name in the module (``HistoryBuffer`` or ``HistoryBuffer.min``).
        args: Positional arguments it was called or constructed with.
        kwargs: Keyword arguments it was constructed with.
        state: What ``__setstate__`` / BUILD gave it.
    """

    pickled_name = "?"
    pickled_module = "?"
    pickled_qualname = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> Placeholder:
        # pickle's NEWOBJ calls only __new__ (a dict subclass such as ConfigDict then gets SETITEMS)
        obj = super().__new__(cls)
        obj.args, obj.kwargs, obj.state, obj.items, obj.list = args, kwargs, None, {}, []
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.kwargs = kwargs

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
                                        {"pickled_name": full, "pickled_module": module, "pickled_qualname": name,
                                         "__module__": __name__})
    return _placeholder_types[full]


def _describe(obj: Any) -> str:
    """A short, safe description of an object met while unpickling (for refusal messages)."""
    if isinstance(obj, TypeToken):
        return f"the class {obj.real.__module__}.{obj.real.__qualname__}"
    if isinstance(obj, type):
        if issubclass(obj, Placeholder):
            return f"the placeholder {obj.pickled_name}"
        return f"the class {obj.__module__}.{obj.__qualname__}"
    if callable(obj):
        return f"the callable {getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__name__)}"
    return f"a {type(obj).__module__}.{type(obj).__qualname__} object"


def _refuse(what: str) -> ModelError:
    return ModelError(f"refusing to load: the checkpoint {what}, which a weights file has no reason to do. "
                      + _REFUSAL_TAIL)


def placeholder_getattr(obj: Any, name: Any, *default: Any) -> type[Placeholder]:
    """``builtins.getattr`` as a checkpoint may use it: only on placeholders, only plain names.

    Protocol-2 pickles store a function defined in a class (mmengine's ``HistoryBuffer.min``,
    kept in every ``HistoryBuffer``'s ``_statistics_methods``) as ``getattr(HistoryBuffer, "min")``.
    Here ``obj`` must be a placeholder type and ``name`` an identifier that is not a dunder; the
    result is the placeholder type for ``module.Class.name``. No real attribute is ever looked up.

    Raises:
        ModelError: any other use (a real class or function, an instance, a non-string or
            dunder name, a default value).
    """
    if default:
        raise _refuse("calls getattr with a default value")
    if not (isinstance(obj, type) and issubclass(obj, Placeholder)):
        raise _refuse(f"applies getattr to {_describe(obj)} (only OpenMMLab placeholders may be)")
    if (not isinstance(name, str) or not name.isidentifier() or len(name) > _MAX_ATTRIBUTE_NAME
            or (name.startswith("__") and name.endswith("__"))):
        shown = repr(name)[:60] if isinstance(name, str | bytes | int | float) else _describe(name)
        raise _refuse(f"applies getattr to {obj.pickled_name} with the attribute name {shown}")
    return placeholder_type(obj.pickled_module, f"{obj.pickled_qualname}.{name}")


def _check_hooks(hooks: Any, what: str) -> None:
    if hooks is not None and not (isinstance(hooks, dict) and not hooks):
        raise _refuse(f"attaches backward hooks ({_describe(hooks)}) to a {what}")


def _check_storage(storage: Any) -> None:
    if not isinstance(storage, torch.storage.TypedStorage | torch.UntypedStorage):
        raise _refuse(f"builds a tensor on {_describe(storage)} instead of a stored tensor record")


def _guard_tensor(name: str, hooks_at: int | None) -> Callable[..., torch.Tensor]:
    """``torch._utils.<name>`` that accepts only real storages and no backward hooks."""
    real = getattr(torch._utils, name)

    def rebuild(storage: Any, *args: Any) -> torch.Tensor:
        _check_storage(storage)
        if hooks_at is not None and len(args) > hooks_at - 1:
            _check_hooks(args[hooks_at - 1], "tensor")
        return real(storage, *args)

    rebuild.__name__ = rebuild.__qualname__ = name
    rebuild.__module__ = "torch._utils"  # what refusal messages name
    return rebuild


def _guard_parameter(name: str) -> Callable[..., torch.Tensor]:
    """``torch._utils.<name>`` for parameters: tensor data, no backward hooks, plain state."""
    real = getattr(torch._utils, name)

    def rebuild(data: Any, requires_grad: Any, backward_hooks: Any, *state: Any) -> torch.Tensor:
        if not isinstance(data, torch.Tensor):
            raise _refuse(f"builds a parameter from {_describe(data)}")
        _check_hooks(backward_hooks, "parameter")
        _check_state(state[0] if state else None, "parameter")
        return real(data, bool(requires_grad), collections.OrderedDict(), *state)

    rebuild.__name__ = rebuild.__qualname__ = name
    rebuild.__module__ = "torch._utils"  # what refusal messages name
    return rebuild


def _check_state(state: Any, what: str) -> None:
    """Python attributes a tensor may carry: a (dict, slots) pair of non-dunder names, or nothing."""
    parts = state if isinstance(state, tuple) else (state,)
    for part in parts:
        if part is None:
            continue
        if not isinstance(part, dict) or any(not isinstance(k, str) or k.startswith("__") for k in part):
            raise _refuse(f"gives a {what} the attributes {_describe(part)}")


_TENSOR_REBUILDS: dict[str, Callable[..., torch.Tensor]] = {
    name: _guard_tensor(name, hooks_at)
    for name, hooks_at in (("_rebuild_tensor", None), ("_rebuild_tensor_v2", 5), ("_rebuild_tensor_v3", 5))
    if hasattr(torch._utils, name)
}
_TENSOR_REBUILDS.update({name: _guard_parameter(name) for name in ("_rebuild_parameter",
                                                                    "_rebuild_parameter_with_state")
                         if hasattr(torch._utils, name)})


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any) -> torch.Tensor:
    """``torch._tensor._rebuild_from_type_v2`` limited to the tensor rebuilds and Tensor/Parameter."""
    if func not in _TENSOR_REBUILDS.values():
        raise _refuse(f"rebuilds a tensor through {_describe(func)}")
    if not any(new_type is token for token in _TENSOR_TYPES.values()):
        raise _refuse(f"rebuilds a tensor as {_describe(new_type)}")
    if not isinstance(args, tuple):
        raise _refuse(f"rebuilds a tensor from {_describe(args)}")
    _check_state(state, "tensor")
    return torch._tensor._rebuild_from_type_v2(func, new_type.real, args, state)


class TypeToken:
    """A torch or numpy class named in a pickle, standing in for it where only its identity is needed.

    ``torch.Tensor``/``torch.nn.Parameter`` appear as ``_rebuild_from_type_v2``'s target type, the
    storage classes in tensor-record ids and ``numpy.ndarray`` as ``_reconstruct``'s subtype; the
    classes themselves are never handed to the pickle, since calling them allocates
    (``torch.FloatStorage(10**12)``, ``numpy.ndarray((10**12,))``).

    Attributes:
        real: The class.
        dtype: The storage's element type (storage classes only; ``uint8`` for UntypedStorage).
    """

    def __init__(self, real: type) -> None:
        self.real = real
        if real is torch.UntypedStorage:
            self.dtype = torch.uint8
        else:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated.*")
                dtype = getattr(real, "dtype", None)
            if isinstance(dtype, torch.dtype):
                self.dtype = dtype

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        raise _refuse(f"calls {_describe(self)}")

    def __repr__(self) -> str:
        return f"<type token {self.real.__module__}.{self.real.__qualname__}>"


_TENSOR_TYPES = {"Tensor": TypeToken(torch.Tensor), "Parameter": TypeToken(torch.nn.Parameter)}
_STORAGE_TYPES = {name: TypeToken(getattr(torch, name)) for name in _STORAGE_NAMES if hasattr(torch, name)}
_NDARRAY = TypeToken(np.ndarray)


def _plain_set(items: Any = ()) -> set[Any]:
    """``set`` as protocol 2 pickles it: from a list (never from an iterator such as a huge range)."""
    if not isinstance(items, list | tuple):
        raise _refuse(f"builds a set from {_describe(items)}")
    return set(items)


def _plain_frozenset(items: Any = ()) -> frozenset[Any]:
    """``frozenset`` from a list, as protocol 2 pickles it."""
    return frozenset(_plain_set(items))


def _latin1_encode(text: str, encoding: str = "latin1", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for bytes, limited to latin-1."""
    if encoding.lower().replace("-", "").replace("_", "") not in ("latin1", "iso88591"):
        raise ModelError(f"checkpoint asks for _codecs.encode with encoding {encoding!r}; only latin-1 is allowed")
    return text.encode("latin1", errors)


def _bytearray(data: Any = b"", *encoding: Any) -> bytearray:
    """``bytearray`` from bytes or a latin-1 string only (``bytearray(10**12)`` would allocate a terabyte)."""
    if isinstance(data, str):
        return bytearray(_latin1_encode(data, *encoding))
    if isinstance(data, bytes | bytearray) and not encoding:
        return bytearray(data)
    raise _refuse(f"builds a bytearray from {_describe(data)}")


def _numpy_reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    """numpy's ``_reconstruct`` as ``ndarray.__reduce__`` uses it: an empty plain ndarray, filled by BUILD."""
    if subtype is not _NDARRAY or not isinstance(shape, tuple) or shape != (0,):
        raise _refuse(f"reconstructs a numpy array of {_describe(subtype)} with shape {str(shape)[:40]}")
    core = getattr(np, "_core", None) or np.core  # numpy 2 renamed core -> _core
    return core.multiarray._reconstruct(np.ndarray, shape, dtype)


def _numpy_frombuffer(buffer: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    """numpy's ``_frombuffer`` (arrays under pickle protocol 5): a copy of bytes stored in the file."""
    if not isinstance(buffer, bytes | bytearray | pickle.PickleBuffer) or not isinstance(dtype, np.dtype) \
            or dtype.hasobject or order not in ("C", "F") or not isinstance(shape, tuple):
        raise _refuse(f"builds a numpy array from {_describe(buffer)}")
    return np.frombuffer(bytes(buffer), dtype=dtype).reshape(shape, order=order).copy()


def _numpy_scalar() -> Any:
    core = getattr(np, "_core", None) or np.core
    return core.multiarray.scalar


def _resolve(module: str, name: str) -> Any:
    """The object a pickle global may resolve to, or ``ModelError`` if it is not allowed."""
    root = module.split(".", 1)[0]
    if root in PLACEHOLDER_PACKAGES:
        return placeholder_type(module, name)
    if module == "torch._utils" and name in _TENSOR_REBUILDS:
        return _TENSOR_REBUILDS[name]
    if module == "torch._tensor" and name == "_rebuild_from_type_v2":
        return _rebuild_from_type_v2
    if module == "torch" and name in _STORAGE_TYPES:
        return _STORAGE_TYPES[name]
    if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
        return getattr(torch, name)
    if (module, name) in (("torch", "Tensor"), ("torch.nn.parameter", "Parameter")):
        return _TENSOR_TYPES[name]
    if (module, name) in (("torch", "Size"), ("torch", "device")):
        return getattr(torch, name)
    if (module, name) == ("collections", "OrderedDict"):
        return collections.OrderedDict
    if module in ("builtins", "__builtin__") and name in _BUILTINS:
        return getattr(__import__("builtins"), name)
    if module in ("builtins", "__builtin__") and name == "bytearray":
        return _bytearray
    if module in ("builtins", "__builtin__") and name in ("set", "frozenset"):
        return _plain_set if name == "set" else _plain_frozenset
    if module in ("builtins", "__builtin__") and name == "getattr":
        return placeholder_getattr
    if (module, name) == ("_codecs", "encode"):
        return _latin1_encode
    if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "_reconstruct":
        return _numpy_reconstruct
    if module in ("numpy.core.numeric", "numpy._core.numeric") and name == "_frombuffer":
        return _numpy_frombuffer
    if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "scalar":
        return _numpy_scalar()
    if (module, name) == ("numpy", "ndarray"):
        return _NDARRAY
    if (module, name) == ("numpy", "dtype"):
        return np.dtype
    if module == "numpy.dtypes" and name.endswith("DType") and hasattr(np, "dtypes"):
        dtype_cls = getattr(np.dtypes, name, None)
        if isinstance(dtype_cls, type):
            return dtype_cls
    raise ModelError(
        f"refusing to load: the checkpoint references the global '{module}.{name}', which a weights file "
        "has no reason to contain (only tensors, plain containers and mmengine bookkeeping objects are "
        "allowed). " + _REFUSAL_TAIL
    )


_BUILD_TARGETS = (Placeholder, collections.OrderedDict, np.ndarray, np.dtype)
"""What pickle's BUILD (``__setstate__`` or attribute setting) may be applied to."""


class RestrictedUnpickler(pickle._Unpickler):  # noqa: SLF001 - the pure-Python unpickler lets BUILD be checked
    """Pure-Python unpickler whose ``find_class`` is the allowlist of :func:`_resolve` and whose
    BUILD and NEWOBJ accept only the targets listed in the module docstring."""

    def find_class(self, module: str, name: str) -> Any:  # noqa: D102 - see class docstring
        return _resolve(module, name)

    def _checked_build(self) -> None:
        target = self.stack[-2] if len(self.stack) >= 2 else None
        if not isinstance(target, _BUILD_TARGETS):
            raise _refuse(f"sets the state or attributes of {_describe(target)}")
        if isinstance(target, collections.OrderedDict):  # attributes (its _metadata): plain names only
            parts = self.stack[-1] if isinstance(self.stack[-1], tuple) else (self.stack[-1],)
            for part in parts:
                if part is not None and (not isinstance(part, dict) or any(
                        not isinstance(k, str) or k.startswith("__") for k in part)):
                    raise _refuse(f"sets the attributes {str(part)[:80]} of an OrderedDict")
        pickle._Unpickler.load_build(self)

    def _checked_newobj(self) -> None:
        cls = self.stack[-2] if len(self.stack) >= 2 else None
        if not isinstance(cls, type):
            raise _refuse(f"creates an object of {_describe(cls)}")
        pickle._Unpickler.load_newobj(self)

    def _checked_global(self) -> None:
        module, name = self.readline(), self.readline()
        if not (module.endswith(b"\n") and name.endswith(b"\n")):
            raise pickle.UnpicklingError("pickle data was truncated inside a GLOBAL opcode")
        mod, qual = module[:-1].decode("utf-8"), name[:-1].decode("utf-8")
        if self.proto < 3 and self.fix_imports:  # Python 2 names, as pickle.Unpickler maps them
            if (mod, qual) in _compat_pickle.NAME_MAPPING:
                mod, qual = _compat_pickle.NAME_MAPPING[(mod, qual)]
            mod = _compat_pickle.IMPORT_MAPPING.get(mod, mod)
        self.append(self.find_class(mod, qual))

    def _refuse_newobj_ex(self) -> None:
        raise _refuse("creates an object with keyword arguments (NEWOBJ_EX)")

    dispatch = dict(pickle._Unpickler.dispatch)
    dispatch[pickle.BUILD[0]] = _checked_build
    dispatch[pickle.NEWOBJ[0]] = _checked_newobj
    dispatch[pickle.NEWOBJ_EX[0]] = _refuse_newobj_ex
    dispatch[pickle.GLOBAL[0]] = _checked_global


def load(file: Any, **kwargs: Any) -> Any:
    """``pickle.load`` through :class:`RestrictedUnpickler` (for ``torch.load``'s legacy path)."""
    return RestrictedUnpickler(file, **kwargs).load()


_LOCAL_HEADER = struct.Struct("<4s5H3L2H")
"""A zip local file header: signature ... name length, extra length (30 bytes)."""


class _ZipUnpickler(RestrictedUnpickler):
    """Restricted unpickler for ``data.pkl`` of a torch zip archive (storages read from the zip)."""

    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, mapped: mmap.mmap | None) -> None:
        super().__init__(io.BytesIO(data), encoding="utf-8")
        self._archive = archive
        self._prefix = prefix
        self._mapped = mapped
        self._storages: dict[str, torch.storage.TypedStorage] = {}
        self.mapped_ranges: dict[int, tuple[int, int]] = {}
        """Data pointer of each memory-mapped record -> (offset in the file, bytes)."""

    def _mapped_record(self, info: zipfile.ZipInfo, nbytes: int, alignment: int) -> torch.Tensor | None:
        """The record's bytes as a uint8 tensor on the copy-on-write map, or None if it cannot be mapped."""
        if self._mapped is None or info.compress_type != zipfile.ZIP_STORED or info.file_size != nbytes:
            return None
        start = info.header_offset
        header = self._mapped[start:start + _LOCAL_HEADER.size]
        if len(header) != _LOCAL_HEADER.size or header[:4] != b"PK\x03\x04":
            return None
        *_, name_len, extra_len = _LOCAL_HEADER.unpack(header)
        offset = start + _LOCAL_HEADER.size + name_len + extra_len
        if offset % alignment or offset + nbytes > len(self._mapped):
            return None  # torch aligns records to 64 bytes; anything else is copied
        raw = torch.frombuffer(self._mapped, dtype=torch.uint8, count=nbytes, offset=offset)
        self.mapped_ranges[raw.data_ptr()] = (offset, nbytes)
        return raw

    def persistent_load(self, pid: Any) -> Any:
        if not isinstance(pid, tuple) or len(pid) != 5 or pid[0] not in ("storage", b"storage"):
            raise ModelError(f"unexpected persistent id in checkpoint: {str(pid)[:80]}")
        _, storage_type, key, _location, numel = pid
        key = key.decode() if isinstance(key, bytes) else str(key)
        if isinstance(storage_type, TypeToken) and hasattr(storage_type, "dtype"):
            dtype = storage_type.dtype
        elif isinstance(storage_type, torch.dtype):
            dtype = storage_type
        else:
            raise _refuse(f"declares a tensor record of {_describe(storage_type)}")
        if not isinstance(numel, int) or numel < 0:
            raise ModelError(f"checkpoint is corrupt: tensor record {key} has size {str(numel)[:40]}")
        if key not in self._storages:
            name = f"{self._prefix}data/{key}"
            try:
                info = self._archive.getinfo(name)
            except KeyError:
                raise ModelError(f"checkpoint is incomplete: tensor data record {name} is missing") from None
            element = torch._utils._element_size(dtype)
            nbytes = numel * element
            raw = self._mapped_record(info, nbytes, max(element, 8))
            if raw is None:
                data = self._archive.read(name)
                if len(data) != nbytes:
                    raise ModelError(f"checkpoint is corrupt: record {name} has {len(data)} bytes, expected {nbytes}")
                raw = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)
            self._storages[key] = torch.storage.TypedStorage(wrap_storage=raw.untyped_storage(), dtype=dtype,
                                                             _internal=True)
        return self._storages[key]


def _map_copy_on_write(path: Path) -> mmap.mmap | None:
    """A private (copy-on-write) map of the file: pages are read only when a tensor is used."""
    try:
        with path.open("rb") as fh:
            return mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY)
    except (OSError, ValueError) as exc:  # e.g. a file system without mmap: records are copied instead
        log.debug("cannot memory-map %s (%s); reading its records into memory", path, exc)
        return None


def _own_memory(tensors: Any, mapped: mmap.mmap | None, ranges: dict[int, tuple[int, int]]) -> None:
    """Replace the tensors of the mapping ``tensors`` by copies in memory of their own, in place.

    Views of one stored record stay views of one copy. Each copied record's pages are dropped
    from the map at once (``MADV_DONTNEED``), so the copies never sit beside a mapped duplicate.
    """
    if not isinstance(tensors, collections.abc.MutableMapping):
        return
    copies: dict[int, torch.UntypedStorage] = {}
    release = getattr(mmap, "MADV_DONTNEED", None) if mapped is not None else None
    for key, value in list(tensors.items()):
        if not isinstance(value, torch.Tensor):
            continue
        source = value.untyped_storage()
        ptr = source.data_ptr()
        if ptr not in copies:
            copies[ptr] = source.clone()
            if release is not None and ptr in ranges:
                offset, nbytes = ranges[ptr]
                start = -(-offset // mmap.PAGESIZE) * mmap.PAGESIZE
                end = (offset + nbytes) // mmap.PAGESIZE * mmap.PAGESIZE
                if end > start:
                    mapped.madvise(release, start, end - start)
        tensors[key] = torch.empty(0, dtype=value.dtype).set_(copies[ptr], value.storage_offset(), value.size(),
                                                              value.stride())


def _load_zip(path: Path, own: Callable[[Any], Any] | None = None) -> Any:
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
            warnings.filterwarnings("ignore", message=".*non-writable.*")
            mapped = _map_copy_on_write(path)
            unpickler = _ZipUnpickler(archive.read(pkl[0]), archive, prefix, mapped)
            obj = unpickler.load()
            if own is not None:
                _own_memory(own(obj), mapped, unpickler.mapped_ranges)
            return obj


def safe_torch_load(path: str | Path, own: Callable[[Any], Any] | None = None) -> Any:
    """Read a ``torch.save`` file without executing anything (see the module docstring).

    Args:
        path: Checkpoint file (zip format, or legacy pickle format).
        own: Optional function of the loaded object giving the (mutable) mapping of tensors the
            caller keeps, e.g. the state dict: those are copied out of the memory-mapped file
            into memory of their own, so that nothing the caller keeps depends on the file (which
            may then be replaced, or deleted on Windows); every other tensor stays mapped and is
            never read unless used.

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
            return _load_zip(p, own)
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
