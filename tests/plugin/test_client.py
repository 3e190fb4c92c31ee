"""The stdlib client against a real ``changeclip serve``: token, errors that name the field, job cycle."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    token_file = tmp_path_factory.mktemp("srv") / "token"
    proc = subprocess.Popen([sys.executable, "-m", "changeclip", "serve", "--port", "0", "--token-file",
                             str(token_file)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        yield json.loads(proc.stdout.readline())["url"], token_file.read_text().strip()
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        proc.stdout.close()


def test_status_token_and_errors(server, raster_pair: tuple[Path, Path], tmp_path: Path) -> None:  # noqa: ANN001
    from changeclip_qgis.core import protocol
    from changeclip_qgis.core.client import BackendClient
    from changeclip_qgis.core.errors import BackendError, BackendUnavailable

    url, token = server
    client = BackendClient(url, token)
    assert client.live()
    status = client.status()
    assert status["protocol_version"] == protocol.PROTOCOL_VERSION and status["devices"][0]["id"] == "cpu"
    with pytest.raises(BackendError, match="HTTP 401") as info:
        BackendClient(url, "wrong-token-wrong-token").status()
    assert info.value.status == 401
    bad = protocol.DetectParams(before=str(raster_pair[0]), after=str(tmp_path / "missing.tif"),
                                output_dir=str(tmp_path / "out"), engine="irmad", prompt_mode="none")
    with pytest.raises(BackendError, match="HTTP 400.*missing.tif"):
        client.submit(bad)
    raw = bad.to_dict()
    raw["after"] = str(raster_pair[1])
    raw["tile"] = 100
    with pytest.raises(BackendError, match="HTTP 422.*tile: "):
        client._request("POST", protocol.PATH_JOBS, body=raw)
    with pytest.raises(BackendUnavailable, match="not an http"):
        BackendClient("ftp://x")


def test_job_cycle(server, raster_pair: tuple[Path, Path], tmp_path: Path) -> None:  # noqa: ANN001
    from changeclip_qgis.core import protocol
    from changeclip_qgis.core.client import BackendClient

    url, token = server
    client = BackendClient(url, token)
    params = protocol.DetectParams(before=str(raster_pair[0]), after=str(raster_pair[1]),
                                   output_dir=str(tmp_path / "out"), engine="irmad", prompt_mode="none")
    seen: list[str] = []
    summary = client.run_job(params, on_progress=lambda p: seen.append(p.stage), poll_s=0.1)
    assert seen[-1] == "done" and summary["changed_area_m2"] > 0
    assert set(protocol.SUMMARY_KEYS) <= set(summary)
    assert Path(summary["outputs"]["mask"]).is_file()


def test_a_lost_job_ends_the_wait_as_a_failure_with_its_reason(monkeypatch: pytest.MonkeyPatch,
                                                              tmp_path: Path) -> None:
    """A backend restarted while the job ran reports it 'lost' (from its job journal): the plugin
    stops waiting and shows the reason, instead of asking for a result that does not exist."""
    from changeclip_qgis.core import protocol
    from changeclip_qgis.core.client import BackendClient
    from changeclip_qgis.core.errors import JobFailed

    assert "lost" in protocol.FINAL_JOB_STATES
    reason = "lost: the server (pid 4711) stopped while this job was running (stage tiles); submit it again"
    job = protocol.JobInfo(job_id="f" * 32, state="queued", params={}, progress=protocol.JobProgress(),
                           device="cpu", created=0.0)
    lost = protocol.JobInfo(job_id=job.job_id, state="lost", params={}, progress=protocol.JobProgress(stage="tiles"),
                            device="cpu", created=0.0, error=reason)
    client = BackendClient("http://127.0.0.1:9", "t" * 32)
    monkeypatch.setattr(client, "submit", lambda params: job)
    monkeypatch.setattr(client, "job", lambda job_id: lost)
    monkeypatch.setattr(client, "result", lambda job_id: pytest.fail("a lost job has no result"))
    params = protocol.DetectParams(before=str(tmp_path / "b.tif"), after=str(tmp_path / "a.tif"),
                                   output_dir=str(tmp_path / "out"), engine="irmad", prompt_mode="none")
    with pytest.raises(JobFailed, match="pid 4711.*submit it again"):
        client.run_job(params, poll_s=0.01)
