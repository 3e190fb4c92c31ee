"""The Before/After proposal rule (plain Python): dates in names and metadata, two different rasters."""

from __future__ import annotations

import pytest

from changeclip_qgis.core.pairing import choose_pair, date_from_text


@pytest.mark.parametrize("text,expected", [
    ("naip_2015", (2015, 0, 0)),
    ("m_4709963_se_14_1_20150926.tif", (2015, 9, 26)),
    ("S2A_MSIL2A_20200831T101031", (2020, 8, 31)),
    ("ortho 2019-06-03", (2019, 6, 3)),
    ("2015:09:26 12:00:00", (2015, 9, 26)),  # TIFF DATETIME
    ("flight_2018_07", (2018, 7, 0)),
    ("before", None),
    ("tile_4709963", None),  # run-on digits are not a year
    ("120150", None),
    ("", None),
])
def test_date_from_text(text: str, expected: tuple[int, int, int] | None) -> None:
    assert date_from_text(text) == expected


def test_choose_pair_prefers_older_as_before() -> None:
    assert choose_pair([(2020, 0, 0), (2015, 0, 0)]) == (1, 0)
    assert choose_pair([(2015, 9, 26), (2015, 0, 0), (2020, 8, 31)]) == (1, 2)
    assert choose_pair([None, (2020, 0, 0), (2010, 5, 1)]) == (2, 1), "undated rasters are not proposed"


def test_choose_pair_without_dates_takes_two_different_rasters() -> None:
    assert choose_pair([None, None, None]) == (0, 1)
    assert choose_pair([(2015, 0, 0), (2015, 0, 0)]) == (0, 1), "one date shared: list order"
    assert choose_pair([(2015, 0, 0), None]) == (0, 1)
    assert choose_pair([None]) is None and choose_pair([]) is None
