"""Fixtures shared by the backend tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def stub_pair(tmp_path: Path) -> tuple[str, str]:
    """Two existing (non-raster) files as before/after: enough for path checks, never read as rasters."""
    b, a = tmp_path / "b.tif", tmp_path / "a.tif"
    b.write_bytes(b"b")
    a.write_bytes(b"a")
    return str(b), str(a)
