"""Which two rasters the dock proposes as Before and After.

A project with two or more rasters gets two *different* ones, the older date as Before when the
layers show dates: in the layer name (``naip_2015``), else in the file name
(``m_4709963_se_14_1_20150926.tif``), else in the file's metadata (GDAL's ``IMAGERY``
``ACQUISITIONDATETIME``, then the TIFF ``DATETIME`` tag). Without two distinct dates the first two
rasters in the layer lists' order are proposed. The outputs of earlier runs (their names carry
the inputs' dates) are never proposed.

The text rules are plain Python (tested without QGIS); :func:`layer_date` reads a layer.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

_YEAR = r"(?:19|20)\d{2}"
_SEP = r"[-_.:/ ]?"
_MONTH = r"(?:0[1-9]|1[0-2])"
_DAY = r"(?:0[1-9]|[12]\d|3[01])"
_DATE_PATTERNS = (
    re.compile(rf"(?<!\d)({_YEAR}){_SEP}({_MONTH}){_SEP}({_DAY})(?!\d)"),
    re.compile(rf"(?<!\d)({_YEAR})[-_.:/]({_MONTH})(?!\d)"),
    re.compile(rf"(?<!\d)({_YEAR})(?!\d)"),
)

Date = tuple[int, int, int]
"""(year, month, day); month and day are 0 where the text gives only a year (or year and month)."""


def date_from_text(text: str) -> Date | None:
    """The first date in ``text`` (most specific form first), or None.

    ``20150926``, ``2015-09-26``, ``2015:09:26 10:00:00`` -> (2015, 9, 26); ``2015_09`` -> (2015, 9, 0);
    ``naip_2015`` -> (2015, 0, 0). Digits that run on (``4709963``, ``120150``) are not dates.
    """
    for pattern in _DATE_PATTERNS:
        match = pattern.search(text or "")
        if match:
            parts = [int(g) for g in match.groups()]
            return (parts + [0, 0])[0], (parts + [0, 0])[1], (parts + [0, 0])[2]
    return None


def choose_pair(dates: Sequence[Date | None]) -> tuple[int, int] | None:
    """Indices ``(before, after)`` of two different rasters among ``dates`` (one per raster, in list order).

    The oldest and the newest date when at least two distinct dates are known (ties: the earlier
    in the list); otherwise the first two. None when there are fewer than two rasters.
    """
    if len(dates) < 2:
        return None
    dated = [(date, i) for i, date in enumerate(dates) if date is not None]
    if len({date for date, _ in dated}) >= 2:
        oldest = min(dated)
        newest = min(dated, key=lambda item: (tuple(-v for v in item[0]), item[1]))
        return oldest[1], newest[1]
    return 0, 1


def metadata_date(path: str) -> Date | None:
    """The acquisition date in a raster file's metadata (GDAL ``IMAGERY`` domain, then TIFF DATETIME)."""
    try:
        from osgeo import gdal
    except ImportError:  # pragma: no cover - GDAL ships with every QGIS
        return None
    try:
        dataset = gdal.Open(path)
    except RuntimeError:
        return None
    if dataset is None:
        return None
    for domain, key in (("IMAGERY", "ACQUISITIONDATETIME"), ("", "TIFFTAG_DATETIME")):
        value = (dataset.GetMetadata(domain) or {}).get(key)
        date = date_from_text(value or "")
        if date is not None:
            return date
    return None


def layer_date(layer: Any, path: str | None) -> Date | None:
    """A raster layer's date: from its name, else its file's name, else its file's metadata."""
    date = date_from_text(layer.name())
    if date is None and path:
        date = date_from_text(os.path.basename(path))
        if date is None:
            date = metadata_date(path)
    return date
