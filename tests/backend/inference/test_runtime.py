"""CPU runtimes (ONNX Runtime, OpenVINO): parity with PyTorch fp32, the export cache, the choice of
runtime, the fallback to torch, and int8.

Only the TINY networks are exported (at 64x64 px, once per variant: the two runtimes share the
verified export). The export cache is ``$CHANGECLIP_CACHE_DIR`` (tests/conftest.py points it at a
per-user folder in the temp directory, reused across runs: its entries are verified by hash).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from osgeo import gdal

from changeclip.errors import InputError
from changeclip.inference import onnx_export, runtime
from changeclip.inference.predictor import ChangeCLIPPredictor, load_model
from changeclip.inference.runtime import CPU_FP32_ORDER, choose_runtime
from changeclip.model.prompts import tokenize

REL_TOL = 1e-4
VARIANTS = ("tiny-rn50", "tiny-vit")
CPU_RUNTIMES = ("onnxruntime", "openvino")
TAGS_A = ["building", "road", "tree", "bare land", "parking lot", "dense residential", "cars",
          "impermeable surface", "park"]
KIT_FILES = {"tiny-rn50": "tiny_rn50_s0_64.npz", "tiny-vit": "tiny_vit_s0_64.npz"}


def _rel(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="module")
def models(tiny_weights: Any) -> dict[tuple[str, str], Any]:
    """load_model of each tiny variant with torch and with each CPU runtime (fp32)."""
    return {(v, rt): load_model(tiny_weights(v), device="cpu", precision="fp32", runtime=rt)
            for v in VARIANTS for rt in ("torch", *CPU_RUNTIMES)}


@pytest.fixture(scope="module")
def real_tiles(data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Six 64x64 RGB tile pairs (0..255 float32) cut from two LEVIR-CD crops."""
    folder = data_dir / "LEVIR-CD" / "justchenhao_BIT_CD"
    names = sorted(p.name for p in (folder / "A").glob("*.png"))[:2]
    assert names, f"no LEVIR-CD crops in {folder}"
    out = []
    for date in ("A", "B"):
        tiles = []
        for name in names:
            img = gdal.Open(str(folder / date / name)).ReadAsArray()[:3].astype(np.float32)
            tiles += [img[:, y:y + 64, x:x + 64] for y, x in ((0, 0), (96, 128), (192, 64))]
        out.append(np.stack(tiles))
    return out[0], out[1]


@pytest.mark.parametrize("rt", CPU_RUNTIMES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_parity_kit(parity_dir: Path, models: dict[tuple[str, str], Any], variant: str, rt: str) -> None:
    """The runtime's fp32 graph on the kit's input and prompts matches the official logits and torch."""
    kit = np.load(parity_dir / KIT_FILES[variant])
    x, ref = kit["input"], kit["logits"]
    lm = models[(variant, rt)]
    fg = ", ".join(["remote sensing image foreground objects", *TAGS_A])
    tokens = tokenize(["remote sensing image background objects", fg], lm.cfg.prompt_length)
    text = lm.encode_text(tokens)[None].numpy()  # official quirk: date B's prompts are date A's
    session = lm.session(64, 64)
    assert session is not None and lm.runtime == rt, lm.runtime_fallback
    ours = session.run(x, text, text)
    with torch.inference_mode():
        torch_out = models[(variant, "torch")].model(torch.from_numpy(x), torch.from_numpy(text),
                                                     torch.from_numpy(text)).numpy()
    assert _rel(ours, ref) <= REL_TOL, f"{rt} vs the official logits: {_rel(ours, ref):.2e}"
    assert _rel(ours, torch_out) <= REL_TOL, f"{rt} vs PyTorch fp32: {_rel(ours, torch_out):.2e}"


@pytest.mark.parametrize("rt", CPU_RUNTIMES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_parity_on_real_tiles(models: dict[tuple[str, str], Any], real_tiles: tuple[np.ndarray, np.ndarray],
                              variant: str, rt: str) -> None:
    """Through the predictor (normalisation, text cache, batching 4 + 2), on real imagery."""
    before, after = real_tiles
    ref = ChangeCLIPPredictor(models[(variant, "torch")], "words", "building, road", batch_size=4)
    ours = ChangeCLIPPredictor(models[(variant, rt)], "words", "building, road", batch_size=4)
    want = ref.predict_logits(before, after)
    got = ours.predict_logits(before, after)
    assert _rel(got, want) <= REL_TOL, f"{rt} vs PyTorch fp32 on real tiles: {_rel(got, want):.2e}"
    info = ours.describe()
    assert (info["runtime"], info["precision"], info["runtime_fallback"]) == (rt, "fp32", None)
    assert info["runtime_threads"] == runtime.physical_cores()


def test_export_cache_verified_rebuilt_and_shared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """Built once, reused; corrupt, stale or manifest-less entries are rebuilt; the other runtime
    reuses a verified export. (A stand-in exporter writes the bytes: the real one is covered above.)"""
    monkeypatch.setenv("CHANGECLIP_CACHE_DIR", str(tmp_path))
    calls: list[Path] = []

    def fake_export(model: Any, embed_dim: int, height: int, width: int, out: Path) -> None:
        calls.append(out)
        out.write_bytes(b"graph %d" % len(calls))

    monkeypatch.setattr(onnx_export, "export_onnx", fake_export)

    def get(rt: str = "onnxruntime", version: str = "1.0") -> Path:
        return onnx_export.cached_export(torch.nn.Identity(), "tiny-rn50", 8, "ab" * 32, rt, version, 64, 64)

    caplog.set_level(logging.INFO)
    path = get()
    assert len(calls) == 1 and path.read_bytes() == b"graph 1"
    assert path.parent == tmp_path / "runtime" / ("ab" * 32) / "onnxruntime-1.0"
    assert "done in" in caplog.text, "the build states its time"
    assert get() == path and len(calls) == 1, "a verified entry is reused"
    path.write_bytes(b"graph 1 truncated?")
    caplog.clear()
    get()
    assert len(calls) == 2 and "corrupt" in caplog.text and path.read_bytes() == b"graph 2"
    manifest = Path(str(path) + onnx_export.MANIFEST_SUFFIX)
    data = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**data, "torch": "0.0"}))
    caplog.clear()
    get()
    assert len(calls) == 3 and "stale" in caplog.text
    manifest.unlink()
    get()
    assert len(calls) == 4
    other = get("openvino", "2.0")
    assert len(calls) == 4 and other.read_bytes() == path.read_bytes(), "the verified export is shared"
    assert get("onnxruntime", "1.1") != path and len(calls) == 4, "a new runtime version has its own entry"
    assert not list(tmp_path.rglob("*.part")), "no temporary file is left behind"


SIGNAL_AFTER_SESSIONS = """
import gc, os, signal, sys
from changeclip.inference.predictor import load_model
first = load_model(sys.argv[1], device="cpu", precision="fp32", runtime="openvino")
second = load_model(sys.argv[1], device="cpu", precision="fp32", runtime="openvino")
del first          # released in the order they were made, as a cache or a job queue does
gc.collect()
del second
gc.collect()
got = []
signal.signal(signal.SIGINT, lambda num, frame: got.append(num))
os.kill(os.getpid(), signal.SIGINT)    # Ctrl-C, SIGTERM and a data worker's SIGCHLD are delivered alike
print("handled", got)
"""


def test_openvino_sessions_leave_signals_deliverable(tiny_weights: Any) -> None:
    """After two OpenVINO sessions are made and released, a signal still reaches its handler.

    Each ``openvino.Core`` installs its own signal stack on the compiling thread and puts back the
    one it found when it goes: with a Core per session, releasing them first-made-first left the
    thread on an unmapped stack and the next signal killed the process with SIGSEGV (the pytest
    process itself, in CI, at a Ctrl-C test and at a DataLoader's SIGCHLD)."""
    proc = subprocess.run([sys.executable, "-c", SIGNAL_AFTER_SESSIONS, str(tiny_weights("tiny-rn50"))],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-2000:]}"
    assert proc.stdout.strip().endswith("handled [2]"), proc.stdout
    assert runtime.openvino_core() is runtime.openvino_core()


def test_choose_runtime() -> None:
    assert choose_runtime("auto", "cuda:0", "bf16", False).runtime == "torch"
    assert choose_runtime("auto", "cpu", "fp32", False, "rn50").runtime == CPU_FP32_ORDER["rn50"][0]
    assert choose_runtime("auto", "cpu", "fp32", False, "vit").runtime == CPU_FP32_ORDER["vit"][0]
    assert choose_runtime("auto", "cpu", "bf16", False).runtime == "torch", "emulated bf16 stays in torch"
    assert choose_runtime("torch", "cpu", "fp32", True).runtime == "torch"
    assert choose_runtime("onnxruntime", "cpu", "int8", False).runtime == "onnxruntime"
    for args, needle in ((("torch", "cpu", "int8", False), "int8 needs"),
                         (("openvino", "cuda:0", "fp32", False), "CPU only"),
                         (("onnxruntime", "cpu", "bf16", True), "not bf16"),
                         (("tensorrt", "cpu", "fp32", False), "runtime must be")):
        with pytest.raises(InputError, match=needle):
            choose_runtime(*args)


def test_missing_runtime_falls_back_with_warning(tiny_weights: Any, monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    def missing(name: str) -> str:
        raise ImportError(f"No module named {name!r}")

    monkeypatch.setattr(runtime, "runtime_version", missing)
    lm = load_model(tiny_weights("tiny-rn50"), device="cpu", runtime="openvino")
    assert lm.runtime == "torch"
    assert "falling back to PyTorch" in caplog.text and "slower" in caplog.text and "openvino" in caplog.text
    info = ChangeCLIPPredictor(lm, "none").describe()
    assert info["runtime"] == "torch" and "openvino" in info["runtime_fallback"]


@pytest.mark.parametrize("rt", CPU_RUNTIMES)
def test_graph_that_fails_to_load_falls_back_with_warning(tiny_weights: Any, tmp_path: Path, rt: str,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    """The real runtime is handed a graph file it cannot load: the run goes on in torch, loudly."""
    from changeclip.inference.predictor import LoadedModel

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx graph")
    monkeypatch.setattr(LoadedModel, "fp32_graph", lambda self, h, w: bad)
    lm = load_model(tiny_weights("tiny-rn50"), device="cpu", runtime=rt)
    tiles = np.full((1, 3, 64, 64), 100.0, dtype=np.float32)
    probs = ChangeCLIPPredictor(lm, "none").predict_proba(tiles, tiles)
    assert probs.shape == (1, 64, 64) and lm.runtime == "torch"
    assert f"runtime {rt} could not be used" in caplog.text and "falling back to PyTorch" in caplog.text
    assert rt in (lm.runtime_fallback or "")


def test_detect_auto_runs_the_cpu_runtime_and_says_so(tiny_weights: Any, tmp_path: Path) -> None:
    """The default (--runtime auto, --precision auto) on the CPU: the fastest runtime, fp32; summary says so."""
    from geodata import change_pair

    from changeclip.pipeline import run_detection
    from changeclip.protocol import DetectParams

    b, a, _ = change_pair(tmp_path, h=100, w=100)
    summary = run_detection(DetectParams(b, a, str(tmp_path / "out"), weights=str(tiny_weights("tiny-rn50")),
                                         prompt_mode="none", device="cpu", tile=64, overlap=16))
    model = summary["model"]
    assert (model["runtime"], model["precision"], model["runtime_requested"]) == (CPU_FP32_ORDER["rn50"][0], "fp32", "auto")
    assert "fastest" in model["runtime_reason"] and model["runtime_fallback"] is None and model["int8"] is None


def test_detect_int8_calibrates_on_the_rasters_and_reports_agreement(tiny_weights: Any, tmp_path: Path) -> None:
    """int8 through the pipeline: 24 calibration + 8 held-out tiles of the pair, a real QDQ graph,
    its agreement with fp32 and its cost in summary.json."""
    import onnx
    from geodata import change_pair

    from changeclip.pipeline import run_detection
    from changeclip.protocol import DetectParams

    b, a, _ = change_pair(tmp_path, h=320, w=320)
    params = DetectParams(b, a, str(tmp_path / "out"), weights=str(tiny_weights("tiny-rn50")), prompt_mode="none",
                          device="cpu", tile=64, overlap=16, runtime="onnxruntime", precision="int8")
    summary = run_detection(params)
    model, int8 = summary["model"], summary["model"]["int8"]
    assert (model["runtime"], model["precision"], model["runtime_fallback"]) == ("onnxruntime", "int8", None)
    assert (int8["calibration_tiles"], int8["compared_tiles"], int8["compared_on"]) == (24, 8, "held-out sample tiles")
    assert int8["pixels"] == 8 * 64 * 64 and int8["quantise_s"] >= 0 and "calibrating" in summary["timings_s"]
    assert 0.9 <= int8["mask_agreement"] <= 1.0 and 0 < int8["max_abs_prob_diff"] < 0.5, int8
    ops = {node.op_type for node in onnx.load(int8["graph"]).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops, "the int8 graph is really quantised"
    with pytest.raises(Exception, match="int8 needs runtime onnxruntime or openvino"):
        DetectParams(b, a, str(tmp_path / "o2"), runtime="torch", precision="int8").validate()


def test_a_failed_int8_quantisation_falls_back_for_its_run_only(tiny_weights: Any, real_tiles: tuple[np.ndarray, np.ndarray],
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """int8 whose quantiser fails: that run computes the fp32 graph's output, warns and says so in its
    summary; the loaded model (shared by a server's jobs) is untouched, and the next run is int8."""
    from changeclip.inference import int8

    before, after = real_tiles
    loaded = load_model(tiny_weights("tiny-rn50"), device="cpu", precision="int8", runtime="onnxruntime")
    fp32 = ChangeCLIPPredictor(load_model(tiny_weights("tiny-rn50"), device="cpu", precision="fp32",
                                          runtime="onnxruntime"), "none")
    real_cached_int8 = int8.cached_int8

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("quantiser crashed")

    monkeypatch.setattr(int8, "cached_int8", broken)
    failed = ChangeCLIPPredictor(loaded, "none")
    with caplog.at_level(logging.WARNING):
        assert failed.calibrate(before, after) is None
        got = failed.predict_logits(before, after)
    assert "int8 quantisation failed (RuntimeError: quantiser crashed)" in caplog.text
    assert np.array_equal(got, fp32.predict_logits(before, after)), "the fallback runs the same runtime's fp32 graph"
    info = failed.describe()
    assert (info["runtime"], info["precision"], info["int8"]) == ("onnxruntime", "fp32", None)
    assert info["runtime_fallback"] == "int8 failed (RuntimeError); ran onnxruntime fp32"

    monkeypatch.setattr(int8, "cached_int8", real_cached_int8)
    assert (loaded.precision, loaded.runtime_fallback) == ("int8", None), "the shared model is not changed"
    later = ChangeCLIPPredictor(loaded, "none")
    report = later.calibrate(before, after)
    assert report is not None and report["calibration_tiles"] == before.shape[0]
    info = later.describe()
    assert (info["precision"], info["runtime_fallback"]) == ("int8", None)
