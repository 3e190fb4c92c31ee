"""ChangeCLIP checkpoints laid out byte for byte as real mmengine writes them, built without mmengine.

``fixtures/mmengine/template-<version>-<rn50|vit>.pth`` were written by real mmengine (see
scripts/make_mmengine_fixtures.py): a ``CheckpointHook`` checkpoint whose ``state_dict`` was moved
last and emptied. :func:`splice_state_dict` keeps every byte of that pickle up to the
``"state_dict"`` key (meta with the config text, message hub with its ``HistoryBuffer`` objects
and their ``getattr(HistoryBuffer, "min")`` methods, optimizer and scheduler states) and the
tensor records they use, and appends a state dict pickled the way ``torch.save`` pickles one
(protocol 2, ``_rebuild_tensor_v2``, one ``('storage', torch.FloatStorage, key, 'cpu', numel)``
record per storage, records 64-byte aligned). Tiny and full-size ChangeCLIP checkpoints are made
this way at test time, so none has to be committed.

The hostile pickles of the tests are assembled here too, opcode by opcode (:class:`Ops`).
"""

from __future__ import annotations

import io
import pickle
import pickletools
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import torch

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "mmengine"
MMENGINE_VERSIONS = ("0.7.4", "0.10.7")
_ALIGN = 64
_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING"}
_PUT_OPS = {"BINPUT", "LONG_BINPUT", "PUT", "MEMOIZE"}


def template(version: str, family: str) -> Path:
    """The committed template written by mmengine ``version`` for ``family`` (``rn50``/``vit``)."""
    path = FIXTURES / f"template-{version}-{family}.pth"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; run scripts/make_mmengine_fixtures.py")
    return path


def _read_torch_zip(path: Path) -> tuple[str, bytes, dict[str, bytes]]:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pkl = next(n for n in names if n.endswith("/data.pkl"))
        root = pkl[: -len("data.pkl")]
        return root, archive.read(pkl), {n[len(root):]: archive.read(n) for n in names if n != pkl}


def _state_dict_slot(data: bytes) -> tuple[int, int]:
    """Where the template's (last, empty) state dict value starts, and how many memo slots precede it."""
    ops = list(pickletools.genops(data))
    key_at = max(i for i, (op, arg, _) in enumerate(ops) if op.name in _STRING_OPS and arg == "state_dict")
    if ops[key_at + 1][0].name not in _PUT_OPS:
        raise ValueError("template: the 'state_dict' key is not memoised as torch.save does")
    start = ops[key_at + 2][2]
    if [op.name for op, _, _ in ops[-2:]] != ["SETITEMS", "STOP"]:
        raise ValueError("template: 'state_dict' is not the last item of the checkpoint")
    memo = [arg for op, arg, pos in ops if op.name in ("BINPUT", "LONG_BINPUT", "PUT") and pos < start]
    if len(memo) != max(memo) + 1 or any(op.name == "MEMOIZE" for op, _, _ in ops):
        raise ValueError("template: unexpected memo layout")
    return start, len(memo)


class _StatePickler(pickle.Pickler):
    """``torch.save``'s pickling of tensors: storages become persistent ids of numbered records."""

    def __init__(self, file: io.BytesIO, first_key: int) -> None:
        super().__init__(file, protocol=2)
        self.first_key = first_key
        self.records: dict[str, torch.UntypedStorage] = {}
        self._keys: dict[int, str] = {}

    def persistent_id(self, obj: object) -> tuple | None:
        if not isinstance(obj, torch.storage.TypedStorage):
            return None
        untyped = obj._untyped_storage
        key = self._keys.setdefault(untyped._cdata, str(self.first_key + len(self._keys)))
        self.records[key] = untyped
        return ("storage", getattr(torch, obj._pickle_storage_type()), key, "cpu", obj._size())


def _aligned_info(archive: zipfile.ZipFile, name: str) -> zipfile.ZipInfo:
    """A stored entry whose data starts on a 64-byte boundary (padding in its extra field, as torch does)."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    offset = archive.fp.tell() + 30 + len(name.encode()) + 4
    pad = (-offset) % _ALIGN
    info.extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
    return info


def splice_state_dict(template_path: Path, state_dict: Mapping[str, torch.Tensor], out: Path) -> Path:
    """Write ``out``: the mmengine template with ``state_dict`` as its state dict (see the module docstring)."""
    root, data, records = _read_torch_zip(template_path)
    start, memo_count = _state_dict_slot(data)
    used = [int(k.rsplit("/", 1)[1]) for k in records if k.startswith("data/")]
    state = OrderedDict(state_dict)
    state._metadata = OrderedDict([("", {"version": 1})])  # type: ignore[attr-defined] - as Module.state_dict()
    buf = io.BytesIO()
    pickler = _StatePickler(buf, first_key=max(used, default=-1) + 1)
    keep_alive = [object() for _ in range(memo_count)]
    pickler.memo = {id(o): (i, o) for i, o in enumerate(keep_alive)}  # continue the template's memo numbering
    pickler.dump(state)
    body = buf.getvalue()
    assert body[:2] == b"\x80\x02" and body[-1:] == b"."
    new_data = data[:start] + body[2:-1] + b"u."  # ... value, SETITEMS, STOP
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr(_aligned_info(archive, f"{root}data.pkl"), new_data)
        for name, raw in records.items():
            archive.writestr(_aligned_info(archive, root + name), raw)
        for key, storage in pickler.records.items():
            info = _aligned_info(archive, f"{root}data/{key}")
            info.file_size = storage.nbytes()
            with archive.open(info, "w") as fh:
                if storage.nbytes():
                    fh.write(memoryview(torch.empty(0, dtype=torch.uint8).set_(storage).numpy()))
    return out


class Ops:
    """A protocol-2 pickle written opcode by opcode (for hostile files no real pickler would emit)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = [b"\x80\x02"]

    def glob(self, module: str, name: str) -> Ops:
        """Push the global ``module.name``."""
        self.parts.append(b"c" + module.encode() + b"\n" + name.encode() + b"\n")
        return self

    def string(self, text: str) -> Ops:
        """Push a str."""
        raw = text.encode()
        self.parts.append(b"X" + struct.pack("<I", len(raw)) + raw)
        return self

    def int(self, value: int) -> Ops:
        """Push an int."""
        self.parts.append(b"J" + struct.pack("<i", value))
        return self

    def raw(self, opcodes: bytes) -> Ops:
        """Append raw opcodes."""
        self.parts.append(opcodes)
        return self

    def call(self, nargs: int) -> Ops:
        """Tuple of the last ``nargs`` items, then REDUCE (the callable sits below them)."""
        self.parts.append({0: b")", 1: b"\x85", 2: b"\x86", 3: b"\x87"}[nargs] + b"R")
        return self

    def in_checkpoint(self) -> bytes:
        """The value built so far as ``{"meta": <value>, "state_dict": {}}``, then STOP."""
        body = b"".join(self.parts[1:])
        head = b"\x80\x02}(" + b"X\x04\x00\x00\x00meta"
        return head + body + b"X\x0a\x00\x00\x00state_dict}u."


def write_torch_zip(path: Path, data_pkl: bytes, records: Mapping[str, bytes] | None = None) -> Path:
    """A torch-format zip around a hand-made ``data.pkl`` (and optional tensor records)."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(_aligned_info(archive, "archive/data.pkl"), data_pkl)
        archive.writestr(_aligned_info(archive, "archive/version"), b"3\n")
        archive.writestr(_aligned_info(archive, "archive/byteorder"), b"little")
        for key, raw in (records or {}).items():
            archive.writestr(_aligned_info(archive, f"archive/data/{key}"), raw)
    return path


def quick_state_dict(variant: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Every key of the ``variant`` network with deterministic values, fast enough for full-size networks.

    Float tensors follow the scales of :func:`changeclip.weights.seeded.seeded_tensor` (so a forward
    pass stays finite) but are drawn by one ``torch.Generator`` (the per-key numpy rule is several
    times slower at full size); integer buffers get their built values as in ``seeded_state_dict``.
    """
    from changeclip.model import build_model
    from changeclip.model.config import PRESETS
    from changeclip.weights.seeded import _built_integer

    cfg = PRESETS[variant]
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for key, ref in build_model(cfg, device="meta").state_dict().items():
        shape = tuple(ref.shape)
        if not ref.is_floating_point():
            out[key] = _built_integer(key, ref, cfg)
            continue
        normal = torch.randn(shape, generator=gen)
        if key.endswith("running_var"):
            value = 0.5 + torch.rand(shape, generator=gen)
        elif key.endswith("running_mean"):
            value = 0.1 * normal
        elif len(shape) == 1 and key.endswith("weight"):
            value = 1.0 + 0.1 * normal
        elif len(shape) >= 2 and key.endswith("weight"):
            value = normal / float(torch.tensor(shape[1:]).prod()) ** 0.5
        else:
            value = 0.02 * normal
        out[key] = value.to(ref.dtype)
    return out
