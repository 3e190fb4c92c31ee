"""The two scripts prepared for the GPU machine run their CPU smoke modes, so they cannot rot
between the rare sessions that have a GPU (timings are printed, never asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _run(repo_root: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=repo_root, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}, check=False)


def test_gpu_bench_smoke_writes_every_section(repo_root: Path, tmp_path: Path) -> None:
    proc = _run(repo_root, "scripts/gpu_bench.py", "--smoke", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_bench.json").read_text(encoding="utf-8"))
    (check,) = report["correctness"]
    assert check["variant"] == "tiny-rn50" and check["finite"]
    assert check["optimised_fp32_vs_naive"] < 1e-4  # the same function as the naive baseline
    assert 0 < check["bf16_vs_fp32"] < 0.1 and check["argmax_agreement_bf16"] > 0.95
    assert {r["mode"] for r in report["network"]} == {"naive", "optimised"}
    paths = {r["path"] for r in report["end_to_end"]}
    assert {"naive", "pipeline"} <= paths and any(p.startswith("stream") for p in paths)
    assert all(r["speedup_vs_naive"] > 0 for r in report["end_to_end"] if r["path"] != "naive"
               and not r["path"].startswith("naive"))
    assert report["memory"]["peak_host_rss_mib"] > 0
    assert proc.stdout.rstrip().splitlines()[-1].startswith("peak host RSS")  # the table comes last


def test_gpu_check_cpu_smoke_compares_with_the_parity_kit(repo_root: Path, parity_dir: Path) -> None:
    proc = _run(repo_root, "scripts/gpu_check.py", "--device", "cpu", "--variants", "rn50", "--size", "64",
                "--batch", "1", env={"CHANGECLIP_PARITY_DIR": str(parity_dir)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.split() for line in proc.stdout.splitlines() if line.startswith("rn50 ")]
    assert [r[1:3] for r in rows] == [["cpu", "fp32"], ["cpu", "fp32"], ["cpu", "bf16"]]
    kit = [float(r[-2]) for r in rows]  # relative error against the official reference logits
    assert kit[0] < 1e-4 and kit[1] < 1e-4, proc.stdout
    assert float(rows[2][3]) < 0.1  # bf16 logits: close to fp32, not equal
