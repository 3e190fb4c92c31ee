"""Widget/algorithm values -> protocol.DetectParams, with errors that name the UI field."""

from __future__ import annotations

from pathlib import Path

import pytest

from changeclip_qgis.core import protocol
from changeclip_qgis.core.errors import ConfigError
from changeclip_qgis.core.params import build_params, default_output_dir, resolve_weights, run_name
from changeclip_qgis.core.runner import device_line, result_line


def test_irmad_params(tmp_path: Path) -> None:
    p = build_params("a.tif", "b.tif", str(tmp_path), engine="irmad", bands="3, 2,1", prompt_mode="none",
                     threshold=0.0, polygons=True, min_area_m2=25)
    assert isinstance(p, protocol.DetectParams)
    assert p.bands == [3, 2, 1] and p.threshold is None and p.weights is None and p.polygons and p.min_area == 25
    # the backend runs in another working directory: every path is made absolute
    assert Path(p.before).is_absolute() and Path(p.after) == Path.cwd() / "b.tif"
    q = build_params("a.tif", "b.tif", "out", engine="irmad", prompt_mode="none", mask_path="m.tif")
    assert q.output_dir == str(Path.cwd() / "out") and q.mask_path == str(Path.cwd() / "m.tif")
    assert q.probability_path is None


def test_errors_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="^Tile size: .*multiple of 32"):
        build_params("a.tif", "b.tif", str(tmp_path), engine="irmad", tile=100, prompt_mode="none")
    with pytest.raises(ConfigError, match="^Prompt: "):
        build_params("a.tif", "b.tif", str(tmp_path), engine="irmad", prompt_mode="words")
    with pytest.raises(ConfigError, match="^Bands: "):
        build_params("a.tif", "b.tif", str(tmp_path), engine="irmad", bands="r,g,b", prompt_mode="none")
    with pytest.raises(ConfigError, match="^Precision: .*fp32"):
        build_params("a.tif", "b.tif", str(tmp_path), engine="irmad", prompt_mode="none", precision="int8")


def test_precision_reaches_the_job(tmp_path: Path) -> None:
    assert build_params("a.tif", "b.tif", str(tmp_path), engine="irmad", prompt_mode="none").precision == "auto"
    p = build_params("a.tif", "b.tif", str(tmp_path), engine="irmad", prompt_mode="none", precision=" bf16 ")
    assert p.precision == "bf16" and p.to_dict()["precision"] == "bf16"


def test_device_line_suggests_bf16_only_where_the_cpu_has_it() -> None:
    cpu = {"id": "cpu", "name": "Xeon", "memory_total_bytes": 2**34}
    line = device_line({"default_device": "cpu", "devices": [{**cpu, "bf16": True}]})
    assert line.startswith("CPU — slow") and "bf16" in line
    assert "bf16" not in device_line({"default_device": "cpu", "devices": [{**cpu, "bf16": False}]})
    assert "bf16" not in device_line({"default_device": "cpu", "devices": [cpu]})  # older backend: no flag
    gpu = {"id": "cuda:0", "name": "NVIDIA H100", "memory_total_bytes": 80 * 2**30, "bf16": True}
    assert device_line({"default_device": "cuda:0", "devices": [{**cpu, "bf16": True}, gpu]}) == \
        "cuda:0 NVIDIA H100 (80 GiB)"


def test_weights_resolution(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs a weights file"):
        resolve_weights("", "", "changeclip")
    assert resolve_weights("", "", "irmad") is None
    (tmp_path / "tiny.safetensors").write_bytes(b"x")
    assert resolve_weights("", str(tmp_path), "changeclip") == str((tmp_path / "tiny.safetensors").resolve())
    assert resolve_weights("tiny.safetensors", str(tmp_path), "changeclip").endswith("tiny.safetensors")
    (tmp_path / "other.pth").write_bytes(b"x")
    with pytest.raises(ConfigError, match="2 weights files"):
        resolve_weights("", str(tmp_path), "changeclip")
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_weights(str(tmp_path / "nope.pth"), "", "changeclip")


def test_names() -> None:
    assert run_name("naip_2015", "naip_2020", "building") == "naip_2015 → naip_2020 [building]"
    assert default_output_dir("/out", "a b", "c/d").startswith("/out/a_b_c_d_")


def test_tagger_weights_come_from_the_tagger_subfolder(tmp_path) -> None:
    from changeclip_qgis.core.params import resolve_tagger_weights

    (tmp_path / "levir.safetensors").write_bytes(b"x")
    assert resolve_tagger_weights(str(tmp_path), "changeclip", "auto") is None  # no tagger folder
    (tmp_path / "tagger").mkdir()
    (tmp_path / "tagger" / "ViT-B-16.pt").write_bytes(b"x")
    expected = str((tmp_path / "tagger" / "ViT-B-16.pt").resolve())
    assert resolve_tagger_weights(str(tmp_path), "changeclip", "auto") == expected
    assert resolve_tagger_weights(str(tmp_path), "changeclip", "none") is None
    assert resolve_tagger_weights(str(tmp_path), "irmad", "auto") is None
    params = build_params("/a.tif", "/b.tif", "/out", weights_dir=str(tmp_path), prompt_mode="auto")
    assert params.tagger_weights == expected
    assert params.weights == str((tmp_path / "levir.safetensors").resolve())  # the subfolder is not a candidate
    (tmp_path / "tagger" / "other.safetensors").write_bytes(b"x")
    with pytest.raises(ConfigError, match="2 weights files"):
        resolve_tagger_weights(str(tmp_path), "changeclip", "auto")


def test_result_line_never_calls_an_unknown_area_zero() -> None:
    assert result_line({"changed_area_m2": 1234.4, "changed_fraction": 0.025}) == \
        "Changed area: 1,234 m² (2.50 % of the valid area)"
    assert result_line({"changed_area_m2": 0.0, "changed_fraction": 0.0}).startswith("Changed area: 0 m²")
    line = result_line({"changed_area_m2": None, "changed_fraction": 0.5, "changed_pixels": 12345})
    assert line == "Changed pixels: 12,345 (50.00 % of the valid area; area unknown: the rasters have no CRS)"
