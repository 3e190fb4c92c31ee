"""HTTP API of the real app over a real socket, with a scripted runner (no pipeline)."""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from changeclip import protocol
from changeclip.client import AuthenticationError, ChangeClipClient, RequestRejected, ServerError
from changeclip.server.settings import MAX_BODY_BYTES

from .conftest import LiveServer, ScriptedRunner, wait_for


def _raw(server: LiveServer, method: str, path: str, body: Any = None, token: str | None = "good",
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    """One request without the client (to see exact statuses and bodies)."""
    data = body if isinstance(body, bytes) else (json.dumps(body).encode() if body is not None else None)
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    if token == "good":
        hdrs["Authorization"] = f"Bearer {server.token}"
    elif token is not None:
        hdrs["Authorization"] = token
    req = urllib.request.Request(server.url + path, data=data, headers=hdrs, method=method)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, str]:
    before, after = tmp_path / "before.tif", tmp_path / "after.tif"
    before.write_bytes(b"x")
    after.write_bytes(b"y")
    return {"before": str(before), "after": str(after), "engine": "irmad"}


def test_liveness_needs_no_token(inprocess_server: tuple[LiveServer, ScriptedRunner]) -> None:
    server, _ = inprocess_server
    assert _raw(server, "GET", protocol.PATH_LIVE, token=None) == (200, {"status": "ok"})


@pytest.mark.parametrize("token", [None, "Bearer wrong-token-wrong-token", "Basic abc", "Bearer", ""])
@pytest.mark.parametrize("method,path", [
    ("GET", protocol.PATH_STATUS), ("GET", protocol.PATH_JOBS), ("POST", protocol.PATH_JOBS),
    ("GET", protocol.PATH_OPENAPI), ("POST", protocol.PATH_SHUTDOWN), ("GET", "/docs"), ("GET", "/no/such/path"),
    ("GET", protocol.PATH_JOB.format(job_id="0" * 32)),
])
def test_everything_else_needs_the_token(inprocess_server: tuple[LiveServer, ScriptedRunner], token: str | None,
                                         method: str, path: str) -> None:
    server, _ = inprocess_server
    status, body = _raw(server, method, path, body=b"{not json" if method == "POST" else None, token=token)
    assert status == 401, (status, body)
    assert "bearer token" in body["detail"]
    # the server is still up and the right token works
    assert server.client.status()["status"] == "ok"


def test_client_with_wrong_token_gets_authentication_error(inprocess_server: tuple[LiveServer, ScriptedRunner]) -> None:
    server, _ = inprocess_server
    with pytest.raises(AuthenticationError, match="401"):
        ChangeClipClient(server.url, "not-the-token-at-all").status()


def test_openapi_behind_token_and_docs_disabled(inprocess_server: tuple[LiveServer, ScriptedRunner]) -> None:
    server, _ = inprocess_server
    doc = server.client.openapi()
    for path in (protocol.PATH_STATUS, protocol.PATH_JOBS, protocol.PATH_JOB, protocol.PATH_JOB_CANCEL,
                 protocol.PATH_JOB_RESULT, protocol.PATH_SHUTDOWN, protocol.PATH_LIVE):
        assert path in doc["paths"], path
    assert "HTTPBearer" in doc["components"]["securitySchemes"]
    assert _raw(server, "GET", "/docs")[0] == 404
    assert _raw(server, "GET", "/redoc")[0] == 404


def test_status_reports_version_devices_queue(inprocess_server: tuple[LiveServer, ScriptedRunner]) -> None:
    server, _ = inprocess_server
    st = server.client.status()
    assert st["protocol_version"] == protocol.PROTOCOL_VERSION
    assert st["devices"][0]["name"] == "test CPU"
    assert st["cuda_available"] is False
    assert st["queue_length"] == 0 and st["loaded_models"] == []


def test_job_lifecycle_result_and_list(inprocess_server: tuple[LiveServer, ScriptedRunner], inputs: dict[str, str],
                                       tmp_path: Path) -> None:
    server, _ = inprocess_server
    info = server.client.submit({**inputs, "output_dir": str(tmp_path / "out")})
    assert info.state in ("queued", "running") and len(info.job_id) == 32
    assert info.params["output_dir"] == str(tmp_path / "out") and info.device == "cpu"
    final = server.client.wait(info.job_id, poll_s=0.05, timeout_s=60)
    assert final.state == "succeeded" and final.error is None
    assert final.progress.fraction == 1.0 and final.progress.stage == "done"
    result = server.client.result(info.job_id)
    assert result["outputs"]["mask"] == str(tmp_path / "out" / "change_mask.tif")
    assert Path(result["outputs"]["mask"]).read_bytes() == b"partial"
    assert [j.job_id for j in server.client.jobs()] == [info.job_id]


def test_cancel_running_job_removes_partial(inprocess_server: tuple[LiveServer, ScriptedRunner],
                                           inputs: dict[str, str], tmp_path: Path) -> None:
    server, runner = inprocess_server
    out = tmp_path / "block"
    info = server.client.submit({**inputs, "output_dir": str(out)})
    wait_for(runner.running_now.is_set, what="job running")
    wait_for(lambda: server.client.job(info.job_id).progress.done > 0, what="progress")
    server.client.cancel(info.job_id)
    final = server.client.wait(info.job_id, poll_s=0.05, timeout_s=60)
    assert final.state == "cancelled"
    assert list(out.iterdir()) == []
    with pytest.raises(ServerError, match="409.*cancelled"):
        server.client.result(info.job_id)


def test_failed_job_reports_message_and_server_stays_healthy(inprocess_server: tuple[LiveServer, ScriptedRunner],
                                                             inputs: dict[str, str], tmp_path: Path) -> None:
    server, _ = inprocess_server
    crash = server.client.submit({**inputs, "output_dir": str(tmp_path / "fail")})
    oops = server.client.submit({**inputs, "output_dir": str(tmp_path / "oops")})
    ok = server.client.submit({**inputs, "output_dir": str(tmp_path / "ok")})
    assert server.client.wait(crash.job_id, 0.05, 60).error == "ValueError: scripted crash"
    assert server.client.wait(oops.job_id, 0.05, 60).error == "scripted input problem: fix the input"
    assert server.client.wait(ok.job_id, 0.05, 60).state == "succeeded"
    assert server.client.live()


@pytest.mark.parametrize("patch,field", [
    ({"tile": 100}, "tile"),
    ({"tile": "256"}, "tile"),
    ({"engine": "magic"}, "engine"),
    ({"threshold": 1.5}, "threshold"),
    ({"bands": [1, 2]}, "bands"),            # protocol rule: changeclip needs 3 bands
    ({"prompt_mode": "words"}, "prompt"),    # protocol rule: words need a prompt
    ({"overlap": 200}, "overlap"),           # protocol rule: overlap < tile/2
    ({"surprise": 1}, "surprise"),
    ({"device": "gpu"}, "device"),
    ({"device": "cuda:7"}, "device"),        # resolve_device refuses it
])
def test_bad_parameters_are_422_naming_the_field(inprocess_server: tuple[LiveServer, ScriptedRunner],
                                                 inputs: dict[str, str], tmp_path: Path,
                                                 patch: dict[str, Any], field: str) -> None:
    server, _ = inprocess_server
    body = {**inputs, "engine": "changeclip", "output_dir": str(tmp_path / "o"), **patch}
    status, answer = _raw(server, "POST", protocol.PATH_JOBS, body)
    assert status == 422, answer
    assert any(field in item["loc"] for item in answer["detail"]), answer
    with pytest.raises(RequestRejected, match=field):
        server.client.submit(body)


@pytest.mark.parametrize("body", [b"{not json", b"[]", b"null", b"{}"])
def test_malformed_bodies_are_422(inprocess_server: tuple[LiveServer, ScriptedRunner], body: bytes) -> None:
    server, _ = inprocess_server
    status, answer = _raw(server, "POST", protocol.PATH_JOBS, body)
    assert status == 422, answer


def test_missing_required_field_is_named(inprocess_server: tuple[LiveServer, ScriptedRunner],
                                         inputs: dict[str, str]) -> None:
    server, _ = inprocess_server
    status, answer = _raw(server, "POST", protocol.PATH_JOBS, inputs)
    assert status == 422
    assert ["body", "output_dir"] == answer["detail"][0]["loc"]


def test_unusable_paths_are_400_with_the_path(inprocess_server: tuple[LiveServer, ScriptedRunner],
                                              inputs: dict[str, str], tmp_path: Path) -> None:
    server, _ = inprocess_server
    missing = str(tmp_path / "nope.tif")
    cases = [
        ({"before": missing, "output_dir": str(tmp_path / "o")}, missing),
        ({"output_dir": inputs["before"] + "/sub"}, inputs["before"] + "/sub"),
        ({"output_dir": str(tmp_path), "mask_path": str(tmp_path)}, str(tmp_path)),
        ({"output_dir": str(tmp_path / "o"), "weights": missing}, missing),
    ]
    for patch, path in cases:
        status, answer = _raw(server, "POST", protocol.PATH_JOBS, {**inputs, **patch})
        assert status == 400, (patch, answer)
        assert path in answer["detail"], (patch, answer)
    # a relative path breaks the schema itself (pattern of an absolute path): 422 naming the field
    status, answer = _raw(server, "POST", protocol.PATH_JOBS, {**inputs, "after": "relative.tif"})
    assert status == 422 and answer["detail"][0]["loc"] == ["body", "after"], answer


def test_existing_outputs_need_overwrite(inprocess_server: tuple[LiveServer, ScriptedRunner],
                                         inputs: dict[str, str], tmp_path: Path) -> None:
    server, _ = inprocess_server
    out = tmp_path / "done"
    out.mkdir()
    (out / protocol.MASK_NAME).write_bytes(b"II*\x00old")  # looks like a GeoTIFF: overwrite may replace it
    with pytest.raises(RequestRejected, match="overwrite"):
        server.client.submit({**inputs, "output_dir": str(out)})
    info = server.client.submit({**inputs, "output_dir": str(out), "overwrite": True})
    assert server.client.wait(info.job_id, 0.05, 60).state == "succeeded"


def test_same_output_twice_is_409_while_running(inprocess_server: tuple[LiveServer, ScriptedRunner],
                                                inputs: dict[str, str], tmp_path: Path) -> None:
    server, runner = inprocess_server
    body = {**inputs, "output_dir": str(tmp_path / "block-same")}
    first = server.client.submit(body)
    with pytest.raises(ServerError, match="409.*already writes"):
        server.client.submit(body)
    runner.release.set()
    assert server.client.wait(first.job_id, 0.05, 60).state == "succeeded"


def test_unknown_job_is_404_and_bad_id_is_422(inprocess_server: tuple[LiveServer, ScriptedRunner]) -> None:
    server, _ = inprocess_server
    assert _raw(server, "GET", protocol.PATH_JOB.format(job_id="a" * 32))[0] == 404
    assert _raw(server, "POST", protocol.PATH_JOB_CANCEL.format(job_id="a" * 32))[0] == 404
    assert _raw(server, "GET", protocol.PATH_JOB_RESULT.format(job_id="a" * 32))[0] == 404
    assert _raw(server, "GET", protocol.PATH_JOB.format(job_id="../../etc"))[0] in (404, 422)
    assert _raw(server, "GET", protocol.PATH_JOB.format(job_id="XYZ"))[0] == 422


def _post_413(server: LiveServer, length_header: tuple[str, str], body_parts: list[bytes]) -> None:
    """POST the headers and ``body_parts`` to the jobs path; the answer must be 413."""
    conn = http.client.HTTPConnection(server.url.removeprefix("http://"), timeout=30)
    try:
        conn.putrequest("POST", protocol.PATH_JOBS)
        conn.putheader("Authorization", f"Bearer {server.token}")
        conn.putheader("Content-Type", "application/json")
        conn.putheader(*length_header)
        conn.endheaders()
        for part in body_parts:
            conn.send(part)
        resp = conn.getresponse()
        assert resp.status == 413
        assert "larger than" in json.loads(resp.read())["detail"]
    finally:
        conn.close()


def test_oversized_body_is_413_without_being_read(inprocess_server: tuple[LiveServer, ScriptedRunner]) -> None:
    # Only the headers are sent: the answer must come from Content-Length alone. (Sending the
    # 2 MiB body as well races the server closing the socket: the client may see a reset.)
    _post_413(inprocess_server[0], ("Content-Length", str(2 << 20)), [])


def test_oversized_chunked_body_is_413(inprocess_server: tuple[LiveServer, ScriptedRunner]) -> None:
    # Exactly the limit in 64 KiB chunks, then one byte more: the server reads all of it (so
    # closing leaves nothing unread, no reset) and answers; the client sends nothing after.
    chunk = b" " * (64 << 10)
    parts = [b"%x\r\n%s\r\n" % (len(chunk), chunk)] * (MAX_BODY_BYTES // len(chunk)) + [b"1\r\nx\r\n"]
    _post_413(inprocess_server[0], ("Transfer-Encoding", "chunked"), parts)


def test_shutdown_endpoint_cancels_running_job(inprocess_server: tuple[LiveServer, ScriptedRunner],
                                               inputs: dict[str, str], tmp_path: Path) -> None:
    server, runner = inprocess_server
    out = tmp_path / "block-shutdown"
    server.client.submit({**inputs, "output_dir": str(out)})
    wait_for(runner.running_now.is_set, what="job running")
    assert "shutting down" in server.client.shutdown()
    wait_for(lambda: not server.client.live(), 60, "server stop")
    assert list(out.iterdir()) == []
