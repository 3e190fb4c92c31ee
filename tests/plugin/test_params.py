"""Widget/algorithm values -> protocol.DetectParams, with errors that name the UI field."""

from __future__ import annotations

from pathlib import Path

import pytest

from changeclip_qgis.core import protocol
from changeclip_qgis.core.errors import ConfigError
from changeclip_qgis.core.params import build_params, default_output_dir, resolve_weights, run_name
from changeclip_qgis.core.runner import device_line, result_line, runtime_line


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
        build_params("a.tif", "b.tif", str(tmp_path), engine="irmad", prompt_mode="none", precision="int4")


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


def test_runtime_line_says_which_runtime_and_precision_ran(tmp_path: Path) -> None:
    assert runtime_line({"engine": "irmad", "model": {"name": "irmad"}}) == ""
    assert runtime_line({"model": {"runtime": "openvino", "precision": "fp32"}}) == ", runtime openvino, fp32"
    int8 = runtime_line({"model": {"runtime": "onnxruntime", "precision": "int8", "int8": {"mask_agreement": 0.991}}})
    assert int8 == ", runtime onnxruntime, int8 (mask agrees with fp32 on 99.1 % of sample pixels)"
    fell = runtime_line({"model": {"runtime": "torch", "precision": "fp32",
                                   "runtime_fallback": "openvino unavailable (ImportError); ran PyTorch instead"}})
    assert fell.startswith(", runtime torch, fp32\nRuntime fallback: openvino unavailable")
    p = build_params("a.tif", "b.tif", str(tmp_path), engine="irmad", prompt_mode="none", runtime="openvino",
                     precision="int8")
    assert (p.runtime, p.precision) == ("openvino", "int8")
    with pytest.raises(ConfigError, match="Runtime: must be one of"):
        build_params("a.tif", "b.tif", str(tmp_path), engine="irmad", prompt_mode="none", runtime="tensorrt")
    with pytest.raises(ConfigError, match="int8 needs runtime onnxruntime or openvino"):
        build_params("a.tif", "b.tif", str(tmp_path), engine="irmad", prompt_mode="none", runtime="torch",
                     precision="int8")


def test_output_grid_defaults_to_the_before_raster(tmp_path: Path) -> None:
    p = build_params("a.tif", "b.tif", str(tmp_path), engine="irmad", prompt_mode="none")
    assert (p.grid, p.target_crs, p.resolution) == ("before", None, None)
    q = build_params("a.tif", "b.tif", str(tmp_path), engine="irmad", prompt_mode="none", grid="after")
    assert (q.grid, q.target_crs, q.resolution) == ("after", None, None)


def test_custom_grid_sends_the_authid_or_the_wkt(qgis_app: object, tmp_path: Path) -> None:
    from osgeo import osr
    from qgis.core import QgsApplication, QgsCoordinateReferenceSystem

    def custom(crs: object, resolution: float = 5.0) -> protocol.DetectParams:
        return build_params("a.tif", "b.tif", str(tmp_path), engine="irmad", prompt_mode="none", grid="custom",
                            target_crs=crs, resolution=resolution)

    p = custom(QgsCoordinateReferenceSystem("EPSG:32634"))
    assert (p.grid, p.target_crs, p.resolution) == ("custom", "EPSG:32634", 5.0)
    assert p.to_dict()["target_crs"] == "EPSG:32634" and p.to_dict()["resolution"] == 5.0
    assert custom(" EPSG:32634 ", 1).target_crs == "EPSG:32634"  # a CRS string (as from the settings) too
    # a CRS without an authority id goes as WKT, which GDAL (the backend) reads back as the same CRS
    proj = "+proj=tmerc +lat_0=0 +lon_0=21.5 +k=0.9996 +x_0=500000 +y_0=0 +datum=WGS84 +units=m +no_defs"
    no_id = QgsCoordinateReferenceSystem()
    assert no_id.createFromProj(proj) and no_id.authid() == ""
    wkt = custom(no_id).target_crs
    assert wkt is not None and wkt.startswith(("PROJCRS[", "PROJCS["))
    srs, expected = osr.SpatialReference(), osr.SpatialReference()
    srs.SetFromUserInput(wkt)
    expected.ImportFromProj4(proj)
    assert srs.IsSame(expected), wkt
    # a QGIS user CRS has an id only QGIS knows ("USER:100000"): that one goes as WKT as well
    registry = QgsApplication.coordinateReferenceSystemRegistry()
    user_id = registry.addUserCrs(no_id, "changeclip test CRS")
    try:
        user = QgsCoordinateReferenceSystem(f"USER:{user_id}")
        assert user.isValid() and user.authid().startswith("USER:")
        assert custom(user).target_crs.startswith(("PROJCRS[", "PROJCS["))
    finally:
        registry.removeUserCrs(user_id)


def test_grid_errors_name_the_ui_labels(qgis_app: object, tmp_path: Path) -> None:
    from qgis.core import QgsCoordinateReferenceSystem

    def grid(**kwargs: object) -> protocol.DetectParams:
        return build_params("a.tif", "b.tif", str(tmp_path), engine="irmad", prompt_mode="none", **kwargs)

    utm = QgsCoordinateReferenceSystem("EPSG:32633")
    with pytest.raises(ConfigError, match="^Output grid 'custom' needs a Target CRS and a Resolution: pick"):
        grid(grid="custom")
    with pytest.raises(ConfigError, match="^Output grid 'custom' needs a Resolution: give their pixel size"):
        grid(grid="custom", target_crs=utm)
    with pytest.raises(ConfigError, match="^Output grid 'custom' needs a Target CRS: pick"):
        grid(grid="custom", target_crs=QgsCoordinateReferenceSystem(), resolution=10)  # invalid = not set
    with pytest.raises(ConfigError, match="^Output grid 'custom' needs a Target CRS and a Resolution"):
        grid(grid="custom", target_crs="  ", resolution=0.0)  # 0 = the dock's "not set"
    with pytest.raises(ConfigError, match="^Resolution: must be a positive pixel size"):
        grid(grid="custom", target_crs=utm, resolution=-2.0)
    with pytest.raises(ConfigError, match="^Resolution: must be a positive pixel size"):
        grid(grid="custom", target_crs=utm, resolution=float("nan"))
    with pytest.raises(ConfigError, match="^Output grid is 'before' but a Resolution was given; they only apply "
                                          "to Output grid 'custom'"):
        grid(resolution=10)
    with pytest.raises(ConfigError, match="^Output grid is 'after' but a Target CRS and a Resolution were given"):
        grid(grid="after", target_crs=utm, resolution=10)
    with pytest.raises(ConfigError, match="^Output grid is 'before' but a Target CRS was given"):
        grid(target_crs="EPSG:32633")
    with pytest.raises(ConfigError, match="^Output grid: must be one of before, after, custom; got 'diagonal'"):
        grid(grid="diagonal")
