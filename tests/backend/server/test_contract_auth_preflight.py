"""Schema contract with the protocol, token handling, and the pre-flight path checks."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from pydantic import ValidationError

from changeclip import protocol
from changeclip.errors import InputError
from changeclip.protocol import DetectParams
from changeclip.server.auth import new_token, prepare_token_file, token_matches
from changeclip.server.preflight import PreflightError, preflight
from changeclip.server.schemas import DetectRequest
from changeclip.server.settings import ServerSettings

# --- contract -----------------------------------------------------------------------


def test_request_model_fields_and_defaults_equal_the_protocol() -> None:
    fields = protocol.param_fields()
    model_fields = {name: f for name, f in DetectRequest.model_fields.items() if name != "kind"}
    assert list(model_fields) == [f["name"] for f in fields]
    for f in fields:
        mf = model_fields[f["name"]]
        assert mf.is_required() == f["required"], f["name"]
        if not f["required"]:
            assert mf.get_default(call_default_factory=True) == f["default"], f["name"]


def test_request_model_choices_equal_the_protocol() -> None:
    schema = DetectRequest.model_json_schema()["properties"]
    for f in protocol.param_fields():
        if f["choices"]:
            assert schema[f["name"]]["enum"] == f["choices"], f["name"]


def test_defaults_round_trip_to_the_same_params() -> None:
    req = DetectRequest(before="/b", after="/a", output_dir="/o")
    assert req.to_params() == DetectParams(before="/b", after="/a", output_dir="/o")


@pytest.mark.parametrize("bad", [{"tile": 256.5}, {"tile": "256"}, {"polygons": "yes"}, {"polygons": 1},
                                 {"bands": ["1"]}, {"extra": 1}, {"threshold": float("nan")}, {"prompt": 3}])
def test_request_model_is_strict(bad: dict) -> None:
    with pytest.raises(ValidationError):
        DetectRequest.model_validate({"before": "/b", "after": "/a", "output_dir": "/o", **bad})


def test_integral_floats_count_as_integers() -> None:
    req = DetectRequest.model_validate({"before": "/b", "after": "/a", "output_dir": "/o", "tile": 512.0,
                                        "bands": [3.0, 2, 1]})
    assert req.tile == 512 and isinstance(req.tile, int) and req.bands == [3, 2, 1]


def test_protocol_rules_surface_as_param_errors() -> None:
    req = DetectRequest(before="/b", after="/a", output_dir="/o", overlap=128, tile=256)
    with pytest.raises(protocol.ParamError) as info:
        req.to_params()
    assert info.value.field == "overlap"


# --- token --------------------------------------------------------------------------


def test_token_matching() -> None:
    token = new_token()
    assert len(token) >= 40 and new_token() != token
    assert token_matches(f"Bearer {token}", token)
    assert token_matches(f"bearer {token}", token)
    for bad in (None, "", token, f"Basic {token}", f"Bearer {token}x", "Bearer ", f"Bearer  {token[:-1]}"):
        assert not token_matches(bad, token), bad


def test_default_token_file_is_private_and_removed(tmp_path: Path) -> None:
    tf = prepare_token_file(None)
    try:
        assert stat.S_IMODE(tf.path.stat().st_mode) == 0o600
        assert stat.S_IMODE(tf.path.parent.stat().st_mode) == 0o700
        assert tf.path.read_text().strip() == tf.token
    finally:
        tf.remove()
    assert not tf.path.exists() and not tf.path.parent.exists()


def test_given_token_file_is_created_or_read(tmp_path: Path) -> None:
    path = tmp_path / "tok"
    created = prepare_token_file(path)
    assert created.created and stat.S_IMODE(path.stat().st_mode) == 0o600
    again = prepare_token_file(path)
    assert not again.created and again.token == created.token
    again.remove()
    assert path.exists()  # a file we did not create is never removed


def test_token_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tok"
    path.write_text("x" * 30)
    os.chmod(path, 0o644)
    with pytest.raises(InputError, match="chmod 600"):
        prepare_token_file(path)
    os.chmod(path, 0o600)
    path.write_text("short")
    with pytest.raises(InputError, match="at least 16"):
        prepare_token_file(path)
    with pytest.raises(InputError, match="does not exist"):
        prepare_token_file(tmp_path / "no" / "tok")


def test_settings_hide_the_token() -> None:
    settings = ServerSettings(token="s" * 32)
    assert "s" * 32 not in repr(settings)
    with pytest.raises(ValueError):
        ServerSettings(token="short")


# --- preflight ----------------------------------------------------------------------


def test_preflight_accepts_good_paths(stub_pair: tuple[str, str], tmp_path: Path) -> None:
    preflight(DetectParams(before=stub_pair[0], after=stub_pair[1], output_dir=str(tmp_path / "new" / "deeper"),
                           engine="irmad"))
    assert not (tmp_path / "new").exists()  # nothing is created


@pytest.mark.parametrize("patch,field,words", [
    ({"before": "/definitely/not/here.tif"}, "before", "does not exist"),
    ({"after": "rel.tif"}, "after", "absolute"),
    ({"before": "/tmp"}, "before", "is a folder"),
    ({"weights": "/nope.safetensors"}, "weights", "does not exist"),
    ({"tagger_weights": "/nope.pt"}, "tagger_weights", "does not exist"),
    ({"before": "/tmp/a\x00b"}, "before", "NUL"),
    ({"before": "/tmp/\ud800.tif"}, "before", "not valid UTF-8"),
    ({"before": "/" + "x" * 5000}, "before", "cannot be accessed"),
])
def test_preflight_refuses_bad_inputs(stub_pair: tuple[str, str], tmp_path: Path, patch: dict, field: str,
                                      words: str) -> None:
    params = DetectParams(before=stub_pair[0], after=stub_pair[1], output_dir=str(tmp_path / "o"), engine="irmad")
    for k, v in patch.items():
        setattr(params, k, v)
    with pytest.raises(PreflightError, match=words) as info:
        preflight(params)
    assert info.value.field == field


def test_preflight_refuses_unusable_outputs(stub_pair: tuple[str, str], tmp_path: Path) -> None:
    def check(**kw: object) -> PreflightError:
        params = DetectParams(before=stub_pair[0], after=stub_pair[1], engine="irmad", **kw)  # type: ignore[arg-type]
        with pytest.raises(PreflightError) as info:
            preflight(params)
        return info.value

    assert "not a folder" in check(output_dir=stub_pair[0]).message
    assert "is a file" in check(output_dir=stub_pair[0] + "/x/y").message
    err = check(output_dir=str(tmp_path / "o"), mask_path=stub_pair[0] + "/m.tif")
    assert err.field == "mask_path"
    out = tmp_path / "out"
    out.mkdir()
    (out / protocol.SUMMARY_NAME).write_text("{}")
    err = check(output_dir=str(out))
    assert "overwrite" in err.message and err.path.endswith(protocol.SUMMARY_NAME)
    preflight(DetectParams(before=stub_pair[0], after=stub_pair[1], engine="irmad", output_dir=str(out),
                           overwrite=True))
    (tmp_path / "polys").mkdir()
    err = check(output_dir=str(tmp_path / "o2"), polygons=True, polygons_path=str(tmp_path / "polys"))
    assert err.field == "polygons_path" and "is a folder" in err.message
