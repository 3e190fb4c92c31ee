"""Checkpoints written by real mmengine load exactly; hostile ones are refused with no side effect.

The fixtures in fixtures/mmengine/ were written by mmengine 0.7.4 and 0.10.7 themselves
(scripts/make_mmengine_fixtures.py); this file needs no mmengine.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine_checkpoints import FIXTURES, MMENGINE_VERSIONS, Ops, splice_state_dict, template, write_torch_zip

from changeclip.errors import ModelError
from changeclip.model.config import PRESETS
from changeclip.weights import load_weights
from changeclip.weights.official import split_checkpoint
from changeclip.weights.safe_unpickle import Placeholder, safe_torch_load
from changeclip.weights.seeded import seeded_state_dict
from changeclip.weights.training_data import training_data

HOOK_FILES = [f"{v}-{kind}" for v in MMENGINE_VERSIONS for kind in ("best", "iter")]
_DANGEROUS_EVENTS = {"os.system", "subprocess.Popen", "os.posix_spawn", "os.exec", "os.spawn", "os.fork",
                     "os.startfile", "ctypes.dlopen", "os.remove", "os.rename", "shutil.rmtree"}


class _AuditLog:
    """Records dangerous audit events (process starts, exec/eval, file writes) while armed."""

    def __init__(self) -> None:
        self.armed = False
        self.events: list[tuple[str, str]] = []

    def __call__(self, event: str, args: tuple) -> None:
        if not self.armed:
            return
        if event in _DANGEROUS_EVENTS:
            self.events.append((event, repr(args)[:200]))
        elif event in ("exec", "compile") and _from_a_string(event, args):
            self.events.append((event, repr(args)[:200]))  # exec/eval of code; a module import has its file
        elif event == "open" and len(args) > 1 and isinstance(args[1], str) and set(args[1]) & set("wax+"):
            self.events.append((event, repr(args)[:200]))


def _from_a_string(event: str, args: tuple) -> bool:
    """Whether an exec/compile audit event is for code made from a string (``<string>``), not a module file."""
    filename = getattr(args[0], "co_filename", "") if event == "exec" else (args[1] if len(args) > 1 else "")
    return not isinstance(filename, str) or filename.startswith("<")


_AUDIT = _AuditLog()
sys.addaudithook(_AUDIT)  # audit hooks cannot be removed; this one does nothing unless armed


@pytest.fixture
def audit() -> Iterator[_AuditLog]:
    """Arm the audit log for the test (process starts, exec/eval and file writes are recorded)."""
    _AUDIT.events.clear()
    yield _AUDIT
    _AUDIT.armed = False


# -- fixtures written by real mmengine ------------------------------------------------------------


@pytest.mark.parametrize("name", HOOK_FILES)
def test_real_mmengine_checkpoint_loads_to_exactly_its_state_dict(name: str, audit: _AuditLog) -> None:
    expected = json.loads((FIXTURES / f"hook-{name}.json").read_text())
    assert "__builtin__.getattr" in expected["globals"], "the fixture must hold mmengine's getattr methods"
    audit.armed = True
    loaded = safe_torch_load(FIXTURES / f"hook-{name}.pth")
    audit.armed = False
    assert audit.events == []
    assert not any(m == "mmengine" or m.startswith("mmengine.") for m in sys.modules), "mmengine was imported"
    assert list(loaded) == expected["keys"]

    state, meta = split_checkpoint(loaded, name)
    assert list(state) == expected["state_dict_keys"]
    for key, tensor in state.items():
        want = expected["state_dict"][key]
        assert str(tensor.dtype).removeprefix("torch.") == want["dtype"] and list(tensor.shape) == want["shape"]
        assert hashlib.sha256(tensor.contiguous().numpy().tobytes()).hexdigest() == want["sha256"], key
    for key, value in expected["meta"].items():
        assert meta[key] == value
    assert meta["classes"] == expected["classes"] and "LEVIR-CD" in meta["data_root"]

    hub = loaded["message_hub"]
    assert sorted(hub["log_scalars"]) == expected["log_scalars"]
    assert sorted(hub["runtime_info"]) == expected["runtime_info"]
    buffer = hub["log_scalars"]["train/loss"]
    assert isinstance(buffer, Placeholder)
    assert buffer.pickled_name == "mmengine.logging.history_buffer.HistoryBuffer"
    methods = buffer.state["statistics_methods" if "statistics_methods" in buffer.state else "_statistics_methods"]
    assert {k: v.pickled_name for k, v in methods.items()} == {
        k: f"mmengine.logging.history_buffer.HistoryBuffer.{k}" for k in ("min", "max", "current", "mean")}
    assert all(isinstance(v, type) and issubclass(v, Placeholder) for v in methods.values())
    assert buffer.state["_log_history"].dtype == np.float64 and buffer.state["_log_history"].size > 0

    moments = sum(len(s) for s in loaded.get("optimizer", {}).get("state", {}).values())
    assert moments == expected["optimizer_state_tensors"]
    assert [sorted(s) for s in loaded.get("param_schedulers", [])] == expected["param_schedulers"]


@pytest.mark.parametrize("version", MMENGINE_VERSIONS)
def test_real_configdict_becomes_an_inert_placeholder(version: str) -> None:
    loaded = load_weights_container(FIXTURES / f"configdict-{version}.pth")
    model = loaded["meta"]["model"]
    assert isinstance(model, Placeholder) and model.pickled_name == "mmengine.config.config.ConfigDict"
    assert _config_fields(model)["type"] == "ChangeCLIP"
    backbone = _config_fields(model)["backbone"]
    assert isinstance(backbone, Placeholder) and _config_fields(backbone)["type"] == "CLIPResNetWithAttention"
    state, meta = split_checkpoint(loaded, "configdict")
    assert "CLIPResNetWithAttention" in meta["cfg"]
    assert state and all(isinstance(t, torch.Tensor) for t in state.values())


def _config_fields(placeholder: Placeholder) -> dict:
    """A ConfigDict placeholder's fields: 0.7.4 pickles them as NEWOBJ + SETITEMS, 0.10.7 as ConfigDict(dict)."""
    if placeholder.items:
        return placeholder.items
    assert isinstance(placeholder.args[0], dict)
    return placeholder.args[0]


def load_weights_container(path: Path) -> dict:
    """``safe_torch_load`` that also checks nothing dangerous happened and mmengine stayed unimported."""
    _AUDIT.events.clear()
    _AUDIT.armed = True
    try:
        loaded = safe_torch_load(path)
    finally:
        _AUDIT.armed = False
    assert _AUDIT.events == []
    assert not any(m == "mmengine" or m.startswith("mmengine.") for m in sys.modules), "mmengine was imported"
    return loaded


@pytest.fixture(scope="module")
def tiny_states() -> dict[str, dict[str, torch.Tensor]]:
    return {v: seeded_state_dict(PRESETS[v], seed=0) for v in ("tiny-rn50", "tiny-vit")}


@pytest.mark.parametrize("version", MMENGINE_VERSIONS)
@pytest.mark.parametrize("variant", ["tiny-rn50", "tiny-vit"])
def test_tiny_changeclip_in_a_real_mmengine_checkpoint(tmp_path: Path, version: str, variant: str,
                                                        tiny_states: dict) -> None:
    family = "rn50" if variant == "tiny-rn50" else "vit"
    path = splice_state_dict(template(version, family), tiny_states[variant], tmp_path / "best_mIoU_iter_4.pth")
    loaded = load_weights(path)
    assert loaded.source_format == "official" and loaded.cfg.name == variant
    assert list(loaded.state_dict) == list(tiny_states[variant])
    for key, value in tiny_states[variant].items():
        got = loaded.state_dict[key]
        assert got.dtype == value.dtype and torch.equal(got, value), key
    found = training_data(loaded.meta)
    assert found is not None and (found.dataset, found.gsd_m) == ("LEVIR-CD", 0.5)
    assert loaded.meta["mmengine_version"].startswith(version)


def test_loaded_weights_do_not_depend_on_the_file(tmp_path: Path, tiny_states: dict) -> None:
    """Records are memory-mapped while loading, but the state dict kept is copied out of the file."""
    path = splice_state_dict(template("0.10.7", "vit"), tiny_states["tiny-vit"], tmp_path / "official.pth")
    loaded = load_weights(path)
    size = path.stat().st_size
    with path.open("r+b") as fh:  # overwrite in place (same inode): a mapped page would now read zeros
        fh.write(bytes(size))
    for key, value in tiny_states["tiny-vit"].items():
        assert torch.equal(loaded.state_dict[key], value), key
    path.unlink()  # nothing holds the file open (on Windows a mapped file could not be deleted)
    assert sum(t.numel() for t in loaded.state_dict.values()) > 0


def test_detect_runs_directly_on_an_official_checkpoint(tmp_path: Path, tiny_states: dict) -> None:
    from geodata import change_pair

    from changeclip.cli import main
    from changeclip.protocol import SUMMARY_NAME

    weights = splice_state_dict(template("0.7.4", "rn50"), tiny_states["tiny-rn50"], tmp_path / "official.pth")
    before, after, _ = change_pair(tmp_path, h=64, w=64)
    out = tmp_path / "out"
    code = main(["detect", before, after, "-o", str(out), "--engine", "changeclip", "--weights", str(weights),
                 "--prompt-mode", "none", "--device", "cpu", "--tile", "64", "--overlap", "0"])
    assert code == 0
    summary = json.loads((out / SUMMARY_NAME).read_text())
    assert summary["model"]["weights_format"] == "official" and summary["model"]["variant"] == "tiny-rn50"


# -- hostile files: refused, nothing run, nothing written -----------------------------------------


class _Reduce:
    """Pickles to ``func(*args)``."""

    def __init__(self, func: object, *args: object) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple:
        return self.func, self.args


def _getattr_chain(start: tuple[str, str], names: list[str]) -> Ops:
    ops = Ops().glob(*start)
    for name in names:
        ops = Ops().glob("__builtin__", "getattr").raw(b"".join(ops.parts[1:])).string(name).call(2)
    return ops


def _popen_chain(marker: Path) -> bytes:
    """``getattr(_rebuild_tensor_v2, "__globals__")["sys"].modules["os"].system("touch marker")`` by getattr."""
    ops = _getattr_chain(("torch._utils", "_rebuild_tensor_v2"), ["__globals__"])
    get_sys = Ops().glob("__builtin__", "getattr").raw(b"".join(ops.parts[1:])).string("get").call(2)
    sys_mod = Ops().raw(b"".join(get_sys.parts[1:])).string("sys").call(1)
    modules = Ops().glob("__builtin__", "getattr").raw(b"".join(sys_mod.parts[1:])).string("modules").call(2)
    get_os = Ops().glob("__builtin__", "getattr").raw(b"".join(modules.parts[1:])).string("get").call(2)
    os_mod = Ops().raw(b"".join(get_os.parts[1:])).string("os").call(1)
    system = Ops().glob("__builtin__", "getattr").raw(b"".join(os_mod.parts[1:])).string("system").call(2)
    return Ops().raw(b"".join(system.parts[1:])).string(f"touch {marker}").call(1).in_checkpoint()


def _placeholder_escape(marker: Path) -> bytes:
    """A placeholder's ``__init__.__globals__["__builtins__"]["exec"](...)``: dunder names are refused."""
    ops = _getattr_chain(("mmengine.logging.history_buffer", "HistoryBuffer"), ["__init__", "__globals__"])
    return Ops().raw(b"".join(ops.parts[1:])).string("__builtins__").call(1).in_checkpoint()


def _rebuild_from_type_getattr(marker: Path) -> bytes:
    """``_rebuild_from_type_v2(getattr, Tensor, (ndarray, "tofile"), {})``: getattr reached without GLOBAL+REDUCE."""
    return (Ops().glob("torch._tensor", "_rebuild_from_type_v2").raw(b"(").glob("__builtin__", "getattr")
            .glob("torch", "Tensor").glob("numpy", "ndarray").string("tofile").raw(b"\x86}tR").in_checkpoint())


def _tensor_with_backward_hook(marker: Path) -> bytes:
    """``_rebuild_tensor_v2`` of a stored tensor with a backward hook (a placeholder) attached."""
    storage = (Ops().raw(b"(").string("storage").glob("torch", "FloatStorage").string("0").string("cpu").int(1)
               .raw(b"tQ"))
    hooks = Ops().glob("collections", "OrderedDict").call(0).raw(b"(").int(0).glob("mmengine.hooks", "Hook").raw(b"u")
    return (Ops().glob("torch._utils", "_rebuild_tensor_v2").raw(b"(").raw(b"".join(storage.parts[1:])).int(0)
            .int(1).raw(b"\x85").int(1).raw(b"\x85\x89").raw(b"".join(hooks.parts[1:])).raw(b"tR").in_checkpoint())


def _build_on_class(marker: Path) -> bytes:
    """BUILD with slot state on ``torch.Tensor``: would set ``torch.Tensor.__repr__`` for the whole process."""
    return (Ops().glob("torch", "Tensor").raw(b"N}").string("__repr__").glob("builtins", "set").raw(b"s\x86b")
            .in_checkpoint())


def _build_on_function(marker: Path) -> bytes:
    """BUILD with slot state on a tensor rebuild function: would replace its defaults."""
    return (Ops().glob("torch._utils", "_rebuild_tensor_v2").raw(b"N}").string("__defaults__").raw(b")s\x86b")
            .in_checkpoint())


def _huge_bytearray(marker: Path) -> bytes:
    """``bytearray(10**12)``: a terabyte allocation."""
    return Ops().glob("__builtin__", "bytearray").raw(b"\x8a\x06\x00\x10\xa5\xd4\xe8\x00").call(1).in_checkpoint()


def _set_of_huge_range(marker: Path) -> bytes:
    """``set(range(10**12))``: an iterator amplified into a terabyte set."""
    return (Ops().glob("__builtin__", "set").glob("__builtin__", "range").raw(b"\x8a\x06\x00\x10\xa5\xd4\xe8\x00")
            .call(1).call(1).in_checkpoint())


def _set_of_placeholder(marker: Path) -> bytes:
    """``set(<placeholder instance>)``: a set only comes from a list."""
    return Ops().glob("__builtin__", "set").glob("mmengine.runner", "Runner").call(0).call(1).in_checkpoint()


def _torch_allocation(marker: Path) -> bytes:
    """``torch.FloatStorage(10**12)``: a 4 TB allocation by calling a storage class."""
    return Ops().glob("torch", "FloatStorage").raw(b"\x8a\x06\x00\x10\xa5\xd4\xe8\x00").call(1).in_checkpoint()


def _dunder_attribute_on_ordereddict(marker: Path) -> bytes:
    """BUILD giving an OrderedDict an instance ``__setstate__`` (a later BUILD would call it)."""
    return (Ops().glob("collections", "OrderedDict").call(0).raw(b"}").string("__setstate__")
            .glob("__builtin__", "complex").raw(b"sb").in_checkpoint())


def _placeholder_as_callable(marker: Path) -> bytes:
    """A placeholder called with a global it would need to run: the global is refused first."""
    return (Ops().glob("mmengine.runner", "Runner").glob("os", "system").string(f"touch {marker}").call(2)
            .in_checkpoint())


def _getattr_default(marker: Path) -> bytes:
    """``getattr(placeholder, "x", os.system)``: a three-argument getattr."""
    return (Ops().glob("__builtin__", "getattr").glob("mmengine.logging", "MessageHub").string("x")
            .glob("mmengine.logging", "MessageHub").call(3).in_checkpoint())


def _newobj_on_instance(marker: Path) -> bytes:
    """NEWOBJ whose 'class' is a set instance."""
    return Ops().glob("builtins", "set").call(0).raw(b")\x81").in_checkpoint()


HANDMADE = {
    "getattr-chain-to-os.system": (_popen_chain, "applies getattr to the callable torch._utils._rebuild_tensor_v2"),
    "placeholder-dunder-escape": (_placeholder_escape, "attribute name '__init__'"),
    "rebuild_from_type-getattr": (_rebuild_from_type_getattr, "rebuilds a tensor through"),
    "build-on-torch.Tensor": (_build_on_class, "sets the state or attributes of the class torch"),
    "build-on-function": (_build_on_function, "sets the state or attributes of the callable"),
    "bytearray-1TB": (_huge_bytearray, "builds a bytearray from"),
    "placeholder-called-with-os.system": (_placeholder_as_callable, "'os.system'"),
    "getattr-with-default": (_getattr_default, "getattr with a default value"),
    "newobj-on-instance": (_newobj_on_instance, "creates an object of a builtins.set"),
    "tensor-with-backward-hook": (_tensor_with_backward_hook, "attaches backward hooks"),
    "set-of-huge-range": (_set_of_huge_range, "global 'builtins.range'"),
    "set-of-placeholder": (_set_of_placeholder, "builds a set from"),
    "storage-allocation": (_torch_allocation, "calls the class torch.FloatStorage"),
    "ordereddict-dunder-attribute": (_dunder_attribute_on_ordereddict, "of an OrderedDict"),
    "ndarray-allocation": (lambda marker: Ops().glob("numpy", "ndarray").raw(b"\x8a\x06\x00\x10\xa5\xd4\xe8\x00")
                           .raw(b"\x85").call(1).in_checkpoint(), "calls the class numpy.ndarray"),
}


def _pickled_payloads(marker: Path) -> dict[str, object]:
    array = np.frombuffer(b"PWNED", dtype=np.uint8)
    return {
        # numpy.ndarray.tofile pickles as getattr(numpy.ndarray, "tofile"): a naive torch.load writes the file
        "ndarray.tofile": _Reduce(np.ndarray.tofile, array, str(marker)),
        "getattr-subprocess.Popen": _Reduce(builtins.getattr, subprocess.Popen, "__init__"),
        "getattr-tensor-method": _Reduce(builtins.getattr, torch.Tensor, "numpy"),
        "eval": _Reduce(builtins.eval, f"open({str(marker)!r}, 'w')"),
    }


def _check_refused(path: Path, marker: Path, audit: _AuditLog, match: str) -> None:
    audit.armed = True
    with pytest.raises(ModelError, match="refusing to load") as info:
        safe_torch_load(path)
    audit.armed = False
    assert match in str(info.value)
    assert "Nothing from the file was executed" in str(info.value)
    assert audit.events == [], f"side effects while loading: {audit.events}"
    assert not marker.exists()


@pytest.mark.parametrize("name", list(HANDMADE))
def test_handmade_hostile_pickles_are_refused_without_side_effects(tmp_path: Path, name: str,
                                                                   audit: _AuditLog) -> None:
    marker = tmp_path / "PWNED"
    make, match = HANDMADE[name]
    path = write_torch_zip(tmp_path / "hostile.pth", make(marker), records={"0": bytes(4)})
    repr_before, defaults_before = torch.Tensor.__repr__, torch._utils._rebuild_tensor_v2.__defaults__
    _check_refused(path, marker, audit, match)
    assert torch.Tensor.__repr__ is repr_before and torch._utils._rebuild_tensor_v2.__defaults__ == defaults_before
    with pytest.raises(ModelError, match="refusing"):
        load_weights(path)
    assert not marker.exists()


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
@pytest.mark.parametrize("name", ["ndarray.tofile", "getattr-subprocess.Popen", "getattr-tensor-method", "eval"])
def test_pickled_hostile_objects_are_refused_without_side_effects(tmp_path: Path, name: str, zip_format: bool,
                                                                  audit: _AuditLog) -> None:
    marker = tmp_path / "PWNED"
    payload = _pickled_payloads(marker)[name]
    path = tmp_path / "hostile.pth"
    torch.save({"meta": {"x": payload}, "state_dict": {"w": torch.zeros(2)}}, path,
               _use_new_zipfile_serialization=zip_format)
    match = {"ndarray.tofile": "applies getattr to the class numpy.ndarray",
             "getattr-subprocess.Popen": "global 'subprocess.Popen'",
             "getattr-tensor-method": "applies getattr to the class torch.Tensor",
             "eval": "global 'builtins.eval'"}[name]
    _check_refused(path, marker, audit, match)


def test_the_tofile_payload_really_writes_a_file_with_a_naive_load(tmp_path: Path) -> None:
    """The refused ``getattr(numpy.ndarray, "tofile")`` file is hostile: plain ``torch.load`` writes the file."""
    marker = tmp_path / "PWNED"
    path = tmp_path / "hostile.pth"
    torch.save({"meta": {"x": _pickled_payloads(marker)["ndarray.tofile"]}, "state_dict": {}}, path)
    code = textwrap.dedent(f"""
        import torch
        torch.load({str(path)!r}, weights_only=False)
    """)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    assert marker.read_bytes() == b"PWNED"


def test_placeholder_getattr_gives_only_inert_placeholders(tmp_path: Path, audit: _AuditLog) -> None:
    """Non-dunder getattr chains on placeholders, and calling their results, only make placeholders."""
    marker = tmp_path / "PWNED"
    chain = _getattr_chain(("mmengine.logging.history_buffer", "HistoryBuffer"), ["mean", "system"])
    data = Ops().raw(b"".join(chain.parts[1:])).string(f"touch {marker}").call(1).in_checkpoint()
    path = write_torch_zip(tmp_path / "chain.pth", data)
    audit.armed = True
    loaded = safe_torch_load(path)
    audit.armed = False
    value = loaded["meta"]
    assert isinstance(value, Placeholder)
    assert value.pickled_name == "mmengine.logging.history_buffer.HistoryBuffer.mean.system"
    assert value.args == (f"touch {marker}",)
    assert audit.events == [] and not marker.exists()


# -- full size --------------------------------------------------------------------------------------

_CONVERT_IN_CHILD = r"""
import json, sys
def status():
    return {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in open("/proc/self/status"))
            if k in ("VmRSS", "VmHWM")}
from changeclip.cli import main
import changeclip.model, changeclip.weights.native, changeclip.weights.official  # imports before the baseline
before = status()
code = main(["weights", "convert", sys.argv[1], sys.argv[2]])
print(json.dumps({"code": code, "before": before, "after": status()}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("variant,family,version", [("rn50", "rn50", "0.7.4"), ("vit-b-16", "vit", "0.10.7")])
def test_full_size_official_checkpoint_converts_bit_identically(tmp_path: Path, variant: str, family: str,
                                                                version: str) -> None:
    from mmengine_checkpoints import quick_state_dict

    from changeclip.weights.native import load_native

    state = quick_state_dict(variant)
    source = splice_state_dict(template(version, family), state, tmp_path / "best_mIoU_iter_17000.pth")
    target = tmp_path / f"{variant}.safetensors"
    proc = subprocess.run([sys.executable, "-c", _CONVERT_IN_CHILD, str(source), str(target)], capture_output=True,
                          text=True, timeout=600, check=False, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["code"] == 0
    # the load is memory-mapped: the peak over the baseline stays well under twice the file's size
    grown = (report["after"]["VmHWM"] - report["before"]["VmRSS"]) * 1024
    assert grown < 2 * source.stat().st_size, f"converting used {grown / 2**20:.0f} MiB more than the baseline"

    cfg, converted, meta = load_native(target)
    assert cfg.name == variant and set(converted) == set(state)
    for key, value in state.items():
        assert converted[key].dtype == value.dtype and torch.equal(converted[key], value), key
    assert (meta["train_dataset"], meta["train_gsd_m"]) == ("LEVIR-CD", 0.5)
    assert meta["source_format"] == "official" and meta["mmengine_version"].startswith(version)


@pytest.mark.slow
def test_detect_reads_a_full_size_official_checkpoint_directly(tmp_path: Path) -> None:
    from geodata import change_pair
    from mmengine_checkpoints import quick_state_dict

    from changeclip.cli import main
    from changeclip.protocol import SUMMARY_NAME

    source = splice_state_dict(template("0.7.4", "rn50"), quick_state_dict("rn50"), tmp_path / "official.pth")
    before, after, _ = change_pair(tmp_path, h=64, w=64)
    code = main(["detect", before, after, "-o", str(tmp_path / "out"), "--engine", "changeclip", "--weights",
                 str(source), "--prompt-mode", "none", "--device", "cpu", "--tile", "64", "--overlap", "0"])
    assert code == 0
    summary = json.loads((tmp_path / "out" / SUMMARY_NAME).read_text())
    assert summary["model"]["weights_format"] == "official" and summary["model"]["variant"] == "rn50"
    assert summary["model"]["weights_sha256"] and summary["model"]["random_weights"] is False


def test_the_audit_log_sees_what_a_naive_load_does(tmp_path: Path, audit: _AuditLog) -> None:
    """The side-effect check can fail: a plain ``torch.load`` of the eval payload shows up in it."""
    marker = tmp_path / "PWNED"
    path = tmp_path / "hostile.pth"
    torch.save({"meta": {"x": _pickled_payloads(marker)["eval"]}, "state_dict": {}}, path)
    audit.armed = True
    torch.load(path, weights_only=False)  # our own harmless payload: it opens a file in tmp_path for writing
    audit.armed = False
    assert {event for event, _ in audit.events} >= {"exec", "open"} and marker.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_mmengine_like_objects_load_under_any_pickle_protocol(tmp_path: Path, protocol: int,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A class-level function kept in an instance (HistoryBuffer's statistics methods) under protocols 2, 4, 5.

    Protocol 2 stores it as ``getattr(HistoryBuffer, "min")``, 4 and 5 as the global ``HistoryBuffer.min``.
    """
    import types

    module = types.ModuleType("mmengine.logging.history_buffer")

    class HistoryBuffer:
        def __init__(self) -> None:
            self._log_history = np.arange(3.0)
            self._statistics_methods = {"min": HistoryBuffer.min}

        def min(self) -> float:
            return float(self._log_history.min())

    HistoryBuffer.__module__ = module.__name__
    HistoryBuffer.__qualname__ = "HistoryBuffer"
    HistoryBuffer.min.__qualname__ = "HistoryBuffer.min"
    HistoryBuffer.min.__module__ = module.__name__
    module.HistoryBuffer = HistoryBuffer
    for name in ("mmengine", "mmengine.logging"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, module.__name__, module)
    path = tmp_path / "ck.pth"
    torch.save({"meta": {}, "state_dict": {"w": torch.arange(4.0)}, "message_hub": {"loss": HistoryBuffer()}}, path,
               pickle_protocol=protocol)
    for name in ("mmengine.logging.history_buffer", "mmengine.logging", "mmengine"):
        monkeypatch.delitem(sys.modules, name)
    loaded = safe_torch_load(path)
    buffer = loaded["message_hub"]["loss"]
    assert buffer.state["_statistics_methods"]["min"].pickled_name == "mmengine.logging.history_buffer.HistoryBuffer.min"
    assert torch.equal(loaded["state_dict"]["w"], torch.arange(4.0))
