"""``changeclip weights`` make-seeded / convert / info / from-clip, through cli.main."""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from changeclip import cli
from changeclip.model import PRESETS
from changeclip.weights import load_weights
from changeclip.weights.seeded import seeded_state_dict


def test_weights_is_a_registered_command() -> None:
    assert "weights" in cli.COMMANDS


def test_make_seeded_and_info(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "seeded.safetensors"
    assert cli.main(["weights", "make-seeded", "--preset", "tiny-vit", str(out)]) == 0
    assert "RANDOM weights" in capsys.readouterr().out
    lw = load_weights(out)
    assert lw.cfg.name == "tiny-vit" and lw.meta["random"] is True
    assert torch.equal(lw.state_dict["gamma"], seeded_state_dict(PRESETS["tiny-vit"])["gamma"])
    assert cli.main(["weights", "make-seeded", "--preset", "tiny-vit", str(out)]) == 2  # exists
    assert "--overwrite" in capsys.readouterr().err
    assert cli.main(["weights", "info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "tiny-vit" in text and "WARNING" in text and "10,109,326" in text  # parity kit's parameter count
    assert cli.main(["weights", "info", "--json", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "native" and info["parameters"] == 10_109_326 and info["random_weights"] is True
    assert info["sha256"] == lw.sha256 and set(info["gamma"]) >= {"mean", "min", "max"}


def test_convert_official_to_native(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sd = seeded_state_dict(PRESETS["tiny-rn50"], seed=0)
    src = tmp_path / "best_mIoU_iter_17000.pth"
    torch.save({"meta": {"iter": 17000, "cfg": "backbone=dict(type='CLIPResNetWithAttention')"},
                "state_dict": OrderedDict(("module." + k, v) for k, v in sd.items())}, src)
    out = tmp_path / "levir_rn50.safetensors"
    assert cli.main(["weights", "convert", str(src), str(out), "--variant", "rn50"]) == 0
    assert "official, tiny-rn50" in capsys.readouterr().out
    lw = load_weights(out)
    assert lw.source_format == "native" and lw.cfg.name == "tiny-rn50"
    assert all(torch.equal(lw.state_dict[k], v) for k, v in sd.items())
    assert lw.meta["converted_from"] == src.name and lw.meta["iter"] == 17000 and "cfg" in lw.meta
    assert cli.main(["weights", "info", str(src)]) == 0
    assert "format      official" in capsys.readouterr().out
    # wrong variant, wrong suffix
    assert cli.main(["weights", "convert", str(src), str(tmp_path / "x.safetensors"), "--variant", "vit-b-16"]) == 3
    assert "vit-b-16" in capsys.readouterr().err
    assert cli.main(["weights", "convert", str(src), str(tmp_path / "x.pth")]) == 2
    assert not (tmp_path / "x.safetensors").exists()


def test_convert_refuses_malicious_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "PWNED"

    class Evil:
        def __reduce__(self) -> tuple:
            return os.system, (f"touch {marker}",)

    src = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "x": Evil()}, src)
    out = tmp_path / "out.safetensors"
    assert cli.main(["weights", "convert", str(src), str(out)]) == 3
    err = capsys.readouterr().err
    assert "refusing to load" in err and "system" in err
    assert not marker.exists() and not out.exists()
    assert cli.main(["weights", "info", str(tmp_path / "missing.pth")]) == 3
    assert "does not exist" in capsys.readouterr().err


def test_from_clip(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                   tiny_weights: Callable[[str], Path]) -> None:
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    clip = CLIP(64, CLIPVisionCfg(layers=4, width=64, patch_size=16, image_size=224, head_width=32),
                CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=2, layers=2), quick_gelu=True)
    src = tmp_path / "clip.pt"
    torch.save(clip.state_dict(), src)
    out = tmp_path / "init.safetensors"
    assert cli.main(["weights", "from-clip", str(src), str(out), "--variant", "tiny-vit"]) == 0
    assert "CLIP initialisation" in capsys.readouterr().out
    lw = load_weights(out)
    assert lw.meta["source"] == "clip-init"
    assert torch.equal(lw.state_dict["backbone.conv1.weight"], clip.state_dict()["visual.conv1.weight"])


def _official_tiny(tmp_path: Path, data_root: str | None) -> Path:
    sd = seeded_state_dict(PRESETS["tiny-rn50"], seed=0)
    cfg = "backbone=dict(type='CLIPResNetWithAttention')\n"
    if data_root is not None:
        cfg += f"data_root = '{data_root}'\n"
    src = tmp_path / "best_mIoU_iter_17000.pth"
    torch.save({"meta": {"iter": 17000, "cfg": cfg}, "state_dict": OrderedDict(sd.items())}, src)
    return src


def test_convert_records_the_training_gsd_from_the_official_config(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    src = _official_tiny(tmp_path, "/home/u/data/WHUCD/cut_data")
    out = tmp_path / "whu.safetensors"
    assert cli.main(["weights", "convert", str(src), str(out)]) == 0
    assert "training imagery: WHU-CD at 0.3 m/px" in capsys.readouterr().out
    meta = load_weights(out).meta
    assert meta["train_dataset"] == "WHU-CD" and meta["train_gsd_m"] == 0.3
    assert cli.main(["weights", "info", str(out)]) == 0
    assert "trained on  WHU-CD at 0.3 m/px (from weights metadata)" in capsys.readouterr().out
    assert cli.main(["weights", "info", "--json", str(src)]) == 0  # the official file itself says so too
    assert json.loads(capsys.readouterr().out)["training_data"] == {
        "dataset": "WHU-CD", "gsd_m": 0.3, "source": "official config data_root"}


def test_convert_training_options_override_and_validate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _official_tiny(tmp_path, None)
    out = tmp_path / "w.safetensors"
    assert cli.main(["weights", "convert", str(src), str(out)]) == 0
    assert "training GSD unknown: pass --train-gsd" in capsys.readouterr().out
    assert "train_gsd_m" not in load_weights(out).meta
    assert cli.main(["weights", "info", str(out)]) == 0
    assert "trained on  unknown" in capsys.readouterr().out
    # a known dataset name brings its GSD; an explicit GSD wins; re-converting a native file works
    assert cli.main(["weights", "convert", str(src), str(out), "--overwrite", "--train-dataset", "LEVIR-CD"]) == 0
    assert load_weights(out).meta["train_gsd_m"] == 0.5
    again = tmp_path / "w2.safetensors"
    assert cli.main(["weights", "convert", str(out), str(again), "--train-gsd", "2"]) == 0
    meta = load_weights(again).meta
    assert meta["train_gsd_m"] == 2.0 and meta["train_dataset"] == "LEVIR-CD"
    capsys.readouterr()
    bad = tmp_path / "bad.safetensors"
    assert cli.main(["weights", "convert", str(src), str(bad), "--train-gsd", "-1"]) == 2
    assert "--train-gsd must be a positive number of metres per pixel" in capsys.readouterr().err
    assert not bad.exists()
