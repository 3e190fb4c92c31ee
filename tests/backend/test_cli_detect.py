"""``changeclip detect``: options, progress, --json, exit codes and messages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from geodata import change_pair

from changeclip.cli import main
from changeclip.commands.detect import ProgressPrinter
from changeclip.protocol import MASK_NAME, SUMMARY_NAME


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "changeclip", "detect", *args], capture_output=True, text=True,
                          env=env, timeout=600, check=False)


def test_detect_json_progress_and_summary(tmp_path: Path) -> None:
    b, a, _ = change_pair(tmp_path, h=120, w=130)
    proc = _cli(b, a, "-o", str(tmp_path / "out"), "--engine", "irmad", "--polygons", "--min-area", "300",
                "--tile", "64", "--overlap", "16", "--json")
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert all(ln["event"] in ("progress", "summary") for ln in lines)
    progress = [ln for ln in lines if ln["event"] == "progress"]
    assert progress[0]["stage"] == "preparing" and progress[-1]["stage"] == "done"
    assert any(ln["stage"] == "tiles" and ln["done"] == ln["total"] > 1 for ln in progress)
    summary = lines[-1]["summary"]
    assert lines[-1]["event"] == "summary" and summary["engine"] == "irmad"
    assert json.loads((tmp_path / "out" / SUMMARY_NAME).read_text())["engine"] == "irmad"
    assert "engine: irmad" in proc.stderr, "the engine is stated in the log"


def test_detect_progress_bar_on_stderr(tmp_path: Path) -> None:
    b, a, _ = change_pair(tmp_path, h=100, w=100)
    proc = _cli(b, a, "-o", str(tmp_path / "out"), "--engine", "irmad", "--bands", "3,2,1", "--value-range", "0:255",
                "--threshold", "0.95", "--probability-dtype", "float32")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    assert "tiles" in proc.stderr and "[#" in proc.stderr and "% of the valid area changed" in proc.stderr
    s = json.loads((tmp_path / "out" / SUMMARY_NAME).read_text())
    assert s["threshold"] == 0.95 and s["scaling"]["source"] == "user" and s["inputs"]["bands"] == [3, 2, 1]


@pytest.mark.parametrize("args,code,message", [
    (["--tile", "100"], 2, "--tile: tile size must be a multiple of 32"),
    (["--overlap", "200"], 2, "--overlap"),
    (["--bands", "x,y"], 2, "--bands"),
    (["--value-range", "5"], 2, "--value-range"),
    (["--device", "tpu"], 2, "--device"),
    (["--resolution", "10"], 2, "--resolution needs --target-crs"),
    (["--grid", "custom"], 2, "--target-crs: grid 'custom' needs a target CRS"),
    (["--engine", "changeclip", "--prompt-mode", "none"], 3, "needs weights"),
    (["--engine", "changeclip", "--prompt-mode", "none", "--weights", "/nonexistent.safetensors"], 3, "does not exist"),
    (["--min-pixels", "-1"], 2, "--min-pixels: must be a whole number of output pixels >= 0"),
])
def test_detect_errors(tmp_path: Path, args: list[str], code: int, message: str,
                       capsys: pytest.CaptureFixture[str]) -> None:
    b, a, _ = change_pair(tmp_path, h=64, w=64)
    out = tmp_path / "out"
    rc = main(["detect", b, a, "-o", str(out), "--engine", "irmad", *args])
    err = capsys.readouterr().err
    assert rc == code and message in err
    assert not out.exists()


def test_detect_missing_input_json_error(tmp_path: Path) -> None:
    proc = _cli(str(tmp_path / "nope.tif"), str(tmp_path / "nope2.tif"), "-o", str(tmp_path / "o"),
                "--engine", "irmad", "--json")
    assert proc.returncode == 2
    last = json.loads(proc.stdout.splitlines()[-1])
    assert last["event"] == "error" and last["exit_code"] == 2 and "not found" in last["message"]
    assert "error: before raster not found" in proc.stderr


def test_detect_existing_output_needs_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    b, a, _ = change_pair(tmp_path, h=64, w=64)
    out = str(tmp_path / "out")
    assert main(["detect", b, a, "-o", out, "--engine", "irmad"]) == 0
    assert main(["detect", b, a, "-o", out, "--engine", "irmad"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["detect", b, a, "-o", out, "--engine", "irmad", "--overwrite"]) == 0
    assert (Path(out) / MASK_NAME).exists()


def test_detect_min_pixels_default_drops_specks(tmp_path: Path) -> None:
    """By default polygons of fewer than 4 output pixels are dropped; --min-pixels 0 keeps them all."""
    b, a, _ = change_pair(tmp_path, h=96, w=96)
    counts = {}
    for name, extra in (("default", []), ("all", ["--min-pixels", "0"])):
        out = tmp_path / name
        assert main(["detect", b, a, "-o", str(out), "--engine", "irmad", "--polygons", *extra]) == 0
        counts[name] = json.loads((out / SUMMARY_NAME).read_text())["polygons"]
    assert counts["default"]["min_pixels"] == 4 and counts["all"]["min_pixels"] == 0
    assert counts["all"]["dropped"] == 0 and counts["default"]["dropped"] > 0, counts
    assert counts["default"]["count"] + counts["default"]["dropped"] == counts["all"]["count"]


def test_progress_printer_json(tmp_path: Path) -> None:
    path = tmp_path / "p.txt"
    with path.open("w") as fh:
        pp = ProgressPrinter(as_json=True, stream=fh)
        pp("tiles", 3, 10)
    line = json.loads(path.read_text())
    assert (line["event"], line["stage"], line["done"], line["total"]) == ("progress", "tiles", 3, 10)
