"""The restricted unpickler: tensors and mmengine bookkeeping load; code in a pickle never runs."""

from __future__ import annotations

import builtins
import collections
import importlib
import os
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from changeclip.errors import ModelError
from changeclip.weights import load_weights
from changeclip.weights.safe_unpickle import Placeholder, safe_torch_load


@pytest.fixture
def fake_mmengine(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """A stand-in ``mmengine.logging`` module whose classes torch.save can pickle by name."""
    pkg = types.ModuleType("mmengine")
    mod = types.ModuleType("mmengine.logging")

    class HistoryBuffer:
        def __init__(self) -> None:
            self._log_history = np.arange(4, dtype=np.float64)
            self._count_history = np.ones(4)

    class MessageHub:
        def __init__(self) -> None:
            self.log_scalars = {"train/loss": HistoryBuffer()}
            self.runtime_info = {"iter": np.int64(17000), "lr": np.float32(1e-4)}

    for cls in (HistoryBuffer, MessageHub):
        cls.__module__ = "mmengine.logging"
        cls.__qualname__ = cls.__name__
        setattr(mod, cls.__name__, cls)
    pkg.logging = mod
    monkeypatch.setitem(sys.modules, "mmengine", pkg)  # both restored after the test
    monkeypatch.setitem(sys.modules, "mmengine.logging", mod)
    return mod


def _container(hub: object) -> dict:
    sd = collections.OrderedDict(w=torch.randn(3, 4), n=torch.arange(5), h=torch.randn(2).half())
    sd["view"] = sd["w"][1]
    return {"meta": {"iter": 17000, "seed": np.int64(3), "cfg": "model = dict(type='ChangeCLIP')",
                     "dataset_meta": {"classes": ("background", "building")}},
            "state_dict": sd, "message_hub": hub}


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_mmengine_container_loads_with_placeholders(tmp_path: Path, fake_mmengine: types.ModuleType,
                                                    zip_format: bool) -> None:
    ck = _container(fake_mmengine.MessageHub())
    path = tmp_path / "ck.pth"
    torch.save(ck, path, _use_new_zipfile_serialization=zip_format)
    sys.modules.pop("mmengine.logging")  # loading must not need mmengine
    sys.modules.pop("mmengine")
    out = safe_torch_load(path)
    for key, value in ck["state_dict"].items():
        assert out["state_dict"][key].dtype == value.dtype and torch.equal(out["state_dict"][key], value)
    assert out["meta"]["seed"] == 3 and out["meta"]["dataset_meta"]["classes"] == ("background", "building")
    hub = out["message_hub"]
    assert isinstance(hub, Placeholder) and hub.pickled_name == "mmengine.logging.MessageHub"
    buf = hub.state["log_scalars"]["train/loss"]
    assert isinstance(buf, Placeholder)
    np.testing.assert_array_equal(buf.state["_log_history"], np.arange(4.0))


class _Evil:
    """Pickles to a call of ``func(*args)``."""

    def __init__(self, func: object, *args: object) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple:
        return self.func, self.args


def _payloads(marker: Path) -> list[tuple[str, object]]:
    return [
        ("system", _Evil(os.system, f"touch {marker}")),
        ("exec", _Evil(builtins.exec, f"open({str(marker)!r}, 'w').write('x')")),
        ("eval", _Evil(builtins.eval, f"open({str(marker)!r}, 'w')")),
        ("Popen", _Evil(subprocess.Popen, ["touch", str(marker)])),
        ("import_module", _Evil(importlib.import_module, "os")),
    ]


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
@pytest.mark.parametrize("index", range(5), ids=["system", "exec", "eval", "Popen", "import_module"])
def test_malicious_pickle_is_refused_and_not_executed(tmp_path: Path, index: int, zip_format: bool) -> None:
    marker = tmp_path / "PWNED"
    name, payload = _payloads(marker)[index]
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "meta": {"x": payload}}, path,
               _use_new_zipfile_serialization=zip_format)
    assert not marker.exists()
    with pytest.raises(ModelError, match="refusing to load") as info:
        safe_torch_load(path)
    assert name in str(info.value) and "Nothing from the file was executed" in str(info.value)
    assert not marker.exists()
    with pytest.raises(ModelError, match="refusing"):
        load_weights(path)  # the public entry point goes through the same loader
    assert not marker.exists()


def test_codecs_only_latin1(tmp_path: Path) -> None:
    import pickle

    path = tmp_path / "codec.pth"
    # protocol 2 pickles bytes as _codecs.encode(str, 'latin1'); any other codec is refused
    data = pickle.dumps(_Evil(__import__("_codecs").encode, "x", "rot13"), protocol=2)
    path.write_bytes(data)
    with pytest.raises(ModelError, match="rot13"):
        safe_torch_load(path)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_torchscript_archive_is_not_loaded(tmp_path: Path) -> None:
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    with pytest.raises(ModelError, match="TorchScript"):
        safe_torch_load(path)


def test_broken_files(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        safe_torch_load(tmp_path / "missing.pth")
    good = tmp_path / "good.pth"
    torch.save({"state_dict": {"w": torch.randn(64, 64)}}, good)
    data = good.read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="truncated"):
        safe_torch_load(cut)
    legacy = tmp_path / "legacy.pth"
    torch.save({"state_dict": {"w": torch.randn(64, 64)}}, legacy, _use_new_zipfile_serialization=False)
    cut.write_bytes(legacy.read_bytes()[:300])
    with pytest.raises(ModelError, match="corrupt or truncated"):
        safe_torch_load(cut)
    other_zip = tmp_path / "other.zip"
    with zipfile.ZipFile(other_zip, "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(ModelError, match="not a PyTorch checkpoint"):
        safe_torch_load(other_zip)
    text = tmp_path / "text.pth"
    text.write_text("hello world, not a checkpoint")
    with pytest.raises(ModelError, match="not a PyTorch checkpoint"):
        safe_torch_load(text)
