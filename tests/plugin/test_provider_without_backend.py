"""The provider loads when no backend is available and says what is missing."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.qgis


@pytest.fixture()
def no_backend(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CHANGECLIP_BACKEND_PYTHON", str(tmp_path / "missing" / "python"))
    monkeypatch.delenv("CHANGECLIP_BACKEND_URL", raising=False)


def test_provider_loads_and_explains(qgis_app: object, no_backend: None, raster_pair: tuple[Path, Path],
                                     tmp_path: Path) -> None:
    import processing
    from qgis.core import QgsApplication, QgsProcessingException

    from changeclip_qgis.processing.provider import ChangeClipProvider

    provider = ChangeClipProvider()
    assert QgsApplication.processingRegistry().addProvider(provider)
    try:
        alg = QgsApplication.processingRegistry().algorithmById("changeclip:detectchanges")
        assert alg is not None
        assert "does not exist" in provider.warningMessage()
        ok, message = alg.canExecute()
        assert not ok and "CHANGECLIP_BACKEND_PYTHON" in message
        names = [p.name() for p in alg.parameterDefinitions()]
        for key in ("BEFORE", "AFTER", "PROMPT", "PROMPT_MODE", "ENGINE", "WEIGHTS", "BANDS", "TILE_SIZE",
                    "OVERLAP", "THRESHOLD", "DEVICE", "PRECISION", "MIN_AREA", "CHANGE_MASK", "CHANGE_PROBABILITY",
                    "CHANGE_POLYGONS"):
            assert key in names
        assert {o.name() for o in alg.outputDefinitions()} >= {"CHANGED_AREA_M2", "CHANGED_FRACTION"}
        before, after = raster_pair
        with pytest.raises(QgsProcessingException, match="Set up backend"):
            processing.run("changeclip:detectchanges", {
                "BEFORE": str(before), "AFTER": str(after), "ENGINE": "irmad", "PROMPT_MODE": "none",
                "CHANGE_MASK": str(tmp_path / "m.tif"), "CHANGE_PROBABILITY": str(tmp_path / "p.tif")})
    finally:
        QgsApplication.processingRegistry().removeProvider(provider)


def test_no_configuration_at_all(qgis_app: object, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from changeclip_qgis.core.backend_launcher import configuration_problem
    from changeclip_qgis.core.settings import BackendConfig

    for name in ("CHANGECLIP_BACKEND_PYTHON", "CHANGECLIP_BACKEND_URL"):
        monkeypatch.delenv(name, raising=False)
    config = BackendConfig(python="", url="", token_file="", weights_dir="")
    assert "Set up backend" in configuration_problem(config)
