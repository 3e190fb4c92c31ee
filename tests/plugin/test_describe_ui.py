"""The plugin's side of describing: what the prompt field says, the weights it sends, the match line."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.qgis


def test_the_prompt_field_says_what_it_does_in_each_mode(qgis_app: object) -> None:
    from changeclip_qgis.core.describe import prompt_help

    assert "do not choose what kind of change" in prompt_help("changeclip", "auto")
    assert "only your words" in prompt_help("changeclip", "words")
    assert "without words" in prompt_help("changeclip", "none")
    assert "IR-MAD uses no prompt" in prompt_help("irmad", "auto")
    for mode in ("auto", "words"):
        assert "Find" in prompt_help("changeclip", mode)  # points at what does select a kind of change


def test_describe_weights_default_to_the_tagger_file(qgis_app: object, tmp_path: Path) -> None:
    from changeclip_qgis.core.describe import resolve_describe_weights

    assert resolve_describe_weights("", "") is None
    assert resolve_describe_weights("", str(tmp_path)) is None  # no tagger/ folder: the backend decides
    (tmp_path / "tagger").mkdir()
    (tmp_path / "tagger" / "ViT-B-16.pt").write_bytes(b"x")
    assert resolve_describe_weights("", str(tmp_path)) == str((tmp_path / "tagger" / "ViT-B-16.pt").resolve())
    assert resolve_describe_weights("~/rs.pt", str(tmp_path)) == str(Path("~/rs.pt").expanduser())


def test_matching_line(qgis_app: object) -> None:
    from changeclip_qgis.core.describe import matching_line

    assert matching_line({"describe": {"polygons": 3, "query": None}}) is None
    summary = {"describe": {"polygons": 12, "query": {"text": "new buildings", "matching": 4,
                                                      "matching_area_m2": 1234.4}}}
    assert matching_line(summary) == "4 of 12 changes match 'new buildings' (1,234 m²)"
    summary["describe"]["query"]["matching_area_m2"] = None  # no CRS: area unknown
    assert matching_line(summary) == "4 of 12 changes match 'new buildings'"
