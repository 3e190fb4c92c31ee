"""The plugin refuses the outputs the backend refuses (issue 14, items 1 and 2), before any work.

The rule is one file: ``changeclip_qgis/core/output_safety.py`` links to the backend's
``changeclip/output_safety.py`` (standard library only), so the dock, Processing and the backend
cannot disagree on what an output may replace.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from changeclip_qgis.core.errors import ConfigError
from changeclip_qgis.core.params import build_params

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_plugin_uses_the_backend_rule_file() -> None:
    plugin = REPO_ROOT / "changeclip_qgis" / "core" / "output_safety.py"
    assert plugin.is_symlink() and plugin.resolve() == (REPO_ROOT / "backend" / "changeclip" / "output_safety.py")


def _build(before: str, after: str, out: Path, **kw: object):  # noqa: ANN202
    return build_params(before, after, str(out), engine="irmad", prompt_mode="none", overwrite=True,
                        **kw)  # type: ignore[arg-type]


def test_build_params_refuses_what_the_backend_refuses(tmp_path: Path) -> None:
    before, after = tmp_path / "b.tif", tmp_path / "a.tif"
    before.write_bytes(b"II*\x00 before")
    after.write_bytes(b"II*\x00 after")
    fifo = tmp_path / "pipe.tif"
    os.mkfifo(fifo)
    notes = tmp_path / "notes.tif"
    notes.write_text("not a raster\n")
    cases = [({"mask_path": str(fifo)}, "Change mask: .*is a FIFO"),
             ({"probability_path": str(before)}, "Change probability: .*is the before input"),
             ({"mask_path": str(notes)}, "is not a GeoTIFF written by ChangeCLIP"),
             ({"mask_path": "/dev/changeclip-test.tif"}, "is inside the system folder /dev"),
             ({"mask_path": str(tmp_path / "x.tif"), "probability_path": str(tmp_path / "x.tif")},
              "is the same file as mask_path"),
             ({"polygons": True, "polygons_path": str(tmp_path / "out" / "summary.json")},
              "summary.json: is the same file as polygons_path"),
             ]
    for kw, message in cases:
        with pytest.raises(ConfigError, match=message):
            _build(str(before), str(after), tmp_path / "out", **kw)
    assert stat.S_ISFIFO(fifo.lstat().st_mode) and notes.read_text() == "not a raster\n"
    assert not (tmp_path / "out").exists()


@pytest.mark.qgis
def test_processing_refuses_a_device_or_fifo_output(provider: object, backend_env: None,
                                                    raster_pair: tuple[Path, Path], tmp_path: Path) -> None:
    import processing
    from qgis.core import QgsProcessingException

    fifo = tmp_path / "summary.json"
    os.mkfifo(fifo)
    params = {"BEFORE": str(raster_pair[0]), "AFTER": str(raster_pair[1]), "ENGINE": "irmad", "PROMPT_MODE": "none",
              "CHANGE_MASK": str(tmp_path / "mask.tif"), "CHANGE_PROBABILITY": str(tmp_path / "prob.tif"),
              "SUMMARY": str(fifo)}
    with pytest.raises(QgsProcessingException, match="SUMMARY: .*is a FIFO"):
        processing.run("changeclip:detectchanges", params)
    params.update(SUMMARY=str(tmp_path / "s.json"), CHANGE_MASK=str(raster_pair[1]))
    with pytest.raises(QgsProcessingException, match="Change mask: .*is the after input"):
        processing.run("changeclip:detectchanges", params)
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    assert not (tmp_path / "mask.tif").exists() and not (tmp_path / "prob.tif").exists()
