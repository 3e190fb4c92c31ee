"""changeclip.preflight: the one set of file checks of the pipeline and the job server."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from changeclip.preflight import PreflightError, confirm_writable, preflight
from changeclip.protocol import SUMMARY_NAME, DetectParams


def _params(pair: tuple[str, str], out: str, **kw: object) -> DetectParams:
    return DetectParams(before=pair[0], after=pair[1], output_dir=out, engine="irmad", **kw)  # type: ignore[arg-type]


def test_returns_folders_to_create_parents_first_and_creates_nothing(stub_pair: tuple[str, str],
                                                                      tmp_path: Path) -> None:
    out = tmp_path / "new" / "deeper"
    missing = preflight(_params(stub_pair, str(out), polygons=True, polygons_path=str(tmp_path / "gp" / "p.gpkg")))
    assert missing == sorted(missing, key=len)
    assert set(missing) == {str(tmp_path / "new"), str(out), str(tmp_path / "gp")}
    assert not (tmp_path / "new").exists() and not (tmp_path / "gp").exists()
    confirm_writable(_params(stub_pair, str(out)), missing)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tif", "b.tif"], "the probe file was removed"


def test_relative_paths_and_vsi_inputs_are_fine_for_the_pipeline(stub_pair: tuple[str, str], tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert preflight(_params(("b.tif", "/vsizip/x.zip/a.tif"), "out")) == [str(tmp_path / "out")]
    with pytest.raises(PreflightError, match="absolute") as info:
        preflight(_params(("b.tif", stub_pair[1]), str(tmp_path / "o")), server=True)
    assert info.value.field == "before"
    with pytest.raises(PreflightError, match="does not exist"):
        preflight(_params((stub_pair[0], "/vsizip/x.zip/a.tif"), str(tmp_path / "o")), server=True)


def test_messages_of_the_command_line(stub_pair: tuple[str, str], tmp_path: Path) -> None:
    with pytest.raises(PreflightError, match=r"^after raster not found: .*nope.tif' does not exist; check the path"):
        preflight(_params((stub_pair[0], str(tmp_path / "nope.tif")), str(tmp_path / "o")))
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / SUMMARY_NAME).write_text("{}")
    with pytest.raises(PreflightError, match="already exists; pass --overwrite") as info:
        preflight(_params(stub_pair, str(tmp_path / "o")))
    assert info.value.field == "output_dir" and info.value.path.endswith(SUMMARY_NAME)
    assert preflight(_params(stub_pair, str(tmp_path / "o"), overwrite=True)) == []


def test_weights_are_checked_by_the_server_only(stub_pair: tuple[str, str], tmp_path: Path) -> None:
    params = _params(stub_pair, str(tmp_path / "o"), weights=str(tmp_path / "none.safetensors"))
    preflight(params)  # the pipeline leaves it to the weights loader (a model error, exit code 3)
    with pytest.raises(PreflightError, match="does not exist") as info:
        preflight(params, server=True)
    assert info.value.field == "weights"


_READ_ONLY_CHECK = """
import sys
from changeclip.preflight import PreflightError, preflight
from changeclip.protocol import DetectParams
b, a, out = sys.argv[1:4]
try:
    preflight(DetectParams(before=b, after=a, output_dir=out, engine="irmad"))
except PreflightError as exc:
    print("REFUSED", exc)
else:
    print("ACCEPTED")
"""


def test_read_only_folder_is_refused() -> None:
    """A folder the backend's user cannot write to is refused before any work.

    The super-user passes every permission check, so under root (as in CI) the check runs in a
    child process as the unprivileged uid 65534 ("nobody"), on a world-readable scratch folder.
    """
    scratch = Path(tempfile.mkdtemp(prefix="changeclip-ro-", dir="/tmp"))
    try:
        scratch.chmod(0o755)
        b, a = scratch / "b.tif", scratch / "a.tif"
        for f in (b, a):
            f.write_bytes(b"x")
            f.chmod(0o644)
        ro = scratch / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        args = [sys.executable, "-c", _READ_ONLY_CHECK, str(b), str(a), str(ro / "out")]
        kw: dict = {"user": 65534, "group": 65534, "extra_groups": []} if os.geteuid() == 0 else {}
        proc = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd="/", **kw)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stdout.startswith("REFUSED") and "not writable" in proc.stdout, proc.stdout
    finally:
        for path in sorted(scratch.rglob("*"), reverse=True):
            path.chmod(0o700)
        shutil.rmtree(scratch, ignore_errors=True)
