"""The GPU session (scripts/gpu_session.sh -> gpu_check.py, gpu_bench.py) runs its CPU smoke
mode, so the scripts cannot rot between the rare sessions that are lent a GPU machine
(timings are printed, never asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def session_out(repo_root: Path, parity_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gpu_session")
    env = {**os.environ, "OUT": str(out), "GPU_SESSION_SMOKE": "1", "PYTHON": sys.executable,
           "CHANGECLIP_PARITY_DIR": str(parity_dir)}
    proc = subprocess.run(["bash", "scripts/gpu_session.sh"], cwd=repo_root, capture_output=True, text=True,
                          timeout=600, env=env, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "gpu_check exit 0" in proc.stdout and "gpu_bench exit 0" in proc.stdout
    return out


def test_gpu_bench_writes_every_section(session_out: Path) -> None:
    report = json.loads((session_out / "gpu_bench.json").read_text(encoding="utf-8"))
    (check,) = report["correctness"]
    assert check["variant"] == "tiny-rn50" and check["finite"]
    assert check["optimised_fp32_vs_naive"] < 1e-4  # the same function as the naive baseline
    assert 0 < check["bf16_vs_fp32"] < 0.1 and check["argmax_agreement_bf16"] > 0.95
    assert {r["mode"] for r in report["network"]} == {"naive", "optimised"}
    paths = {r["path"] for r in report["end_to_end"]}
    assert {"naive", "pipeline"} <= paths and any(p.startswith("stream") for p in paths)
    timed = [r for r in report["end_to_end"] if r["variant"] != "no-op engine"]
    assert all(r["speedup_vs_naive"] > 0 for r in timed if not r["path"].startswith("naive"))
    assert [r["raster_px"] for r in report["end_to_end"] if r["variant"] == "no-op engine"] == [384]
    train = report["training"]  # the training-throughput section, tiny network in smoke mode
    assert [(r["variant"], r["batch"], r["precision"]) for r in train] == [("tiny-rn50", 2, "fp32"),
                                                                          ("tiny-rn50", 2, "bf16")]
    assert all(r["pairs_per_s"] > 0 and r["peak_rss_mib"] > 0 for r in train)
    assert report["memory"]["peak_host_rss_mib"] > 0
    log = (session_out / "gpu_bench.txt").read_text(encoding="utf-8")
    assert log.rstrip().splitlines()[-1].startswith("peak host RSS")  # the table comes last


def test_gpu_check_compares_with_the_parity_kit(session_out: Path) -> None:
    text = (session_out / "gpu_check.txt").read_text(encoding="utf-8")
    rows = [line.split() for line in text.splitlines() if line.startswith("rn50 ")]
    assert [r[1:3] for r in rows] == [["cpu", "fp32"], ["cpu", "fp32"], ["cpu", "bf16"]]
    kit = [float(r[-2]) for r in rows]  # relative error against the official reference logits
    assert kit[0] < 1e-4 and kit[1] < 1e-4, text
    assert float(rows[2][3]) < 0.1  # bf16 logits: close to fp32, not equal
    assert (session_out / "versions.txt").read_text(encoding="utf-8").startswith("torch ")
