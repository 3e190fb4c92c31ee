"""The dock's description of a weights file, read without torch, against files the backend writes.

The backend writes native weights (changeclip.weights.native.save_weights); the plugin reads
their header only (changeclip_qgis.core.weights_info). These tests run both, so a change of the
metadata keys on one side fails here.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from changeclip_qgis.core.weights_info import summarize_weights


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from changeclip.model.config import PRESETS
    from changeclip.weights.native import save_weights
    from changeclip.weights.seeded import seeded_state_dict

    folder = tmp_path_factory.mktemp("weights_info")
    cfg = PRESETS["tiny-rn50"]
    sd = seeded_state_dict(cfg)
    metas = {"levir": {"train_dataset": "LEVIR-CD", "train_gsd_m": 0.5},
             "gsd_only": {"train_gsd_m": 2.0}, "cdd": {"train_dataset": "CDD"},
             "unknown": {"converted_from": "x.pth"}, "seeded": {"source": "seeded", "random": True}}
    return {name: save_weights(sd, cfg, folder / f"{name}.safetensors", meta=meta) for name, meta in metas.items()}


@pytest.mark.parametrize(("name", "text", "warning"), [
    ("levir", "tiny-rn50 · trained on LEVIR-CD at 0.5 m/px", False),
    ("gsd_only", "tiny-rn50 · trained on 2 m/px imagery", False),
    ("cdd", "tiny-rn50 · trained on CDD", False),
    ("unknown", "tiny-rn50 · training imagery unknown (no scale check)", False),
    ("seeded", "tiny-rn50 · RANDOM test weights: their change maps are meaningless", True),
])
def test_native_files_written_by_the_backend(written: dict[str, Path], name: str, text: str, warning: bool) -> None:
    summary = summarize_weights(str(written[name]))
    assert (summary.text, summary.warning) == (text, warning)


def test_other_files_are_described_not_raised(tmp_path: Path) -> None:
    assert summarize_weights(str(tmp_path / "missing.safetensors")).warning
    pth = tmp_path / "best_mIoU_iter_17000.pth"
    pth.write_bytes(b"PK\x03\x04 not opened by the plugin")
    assert summarize_weights(str(pth)).text.startswith("official checkpoint")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 3)
    assert summarize_weights(str(junk)).warning and "cannot be read" in summarize_weights(str(junk)).text
    other = tmp_path / "other.safetensors"  # a valid safetensors file of another model
    header = b'{"__metadata__": {"format": "pt"}}'
    other.write_bytes(struct.pack("<Q", len(header)) + header)
    s = summarize_weights(str(other))
    assert s.warning and "not ChangeCLIP weights" in s.text and "weights convert" in s.text
