"""HTTP client of the backend's job API (``changeclip serve``), standard library only.

The plugin cannot import the backend's own client (it runs inside QGIS's Python), so this is
a small urllib client of the endpoints in :mod:`protocol`. Requests to loopback addresses
bypass any configured proxy.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

from . import protocol
from .errors import BackendError, BackendUnavailable, JobCancelledError, JobFailed

_LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


class BackendClient:
    """Talks to one backend server.

    Args:
        base_url: e.g. ``http://127.0.0.1:8765`` (no trailing slash needed).
        token: the server's bearer token ("" if it needs none).
        timeout_s: per-request timeout in seconds.
    """

    def __init__(self, base_url: str, token: str | None = None, timeout_s: float = 30.0) -> None:
        parsed = urllib.parse.urlparse(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise BackendUnavailable(f"backend URL {base_url!r} is not an http(s) URL; "
                                     "set it like http://127.0.0.1:8765 in the ChangeCLIP settings")
        self.base_url = base_url.rstrip("/")
        self.token = token or ""
        self.timeout_s = timeout_s
        handlers: list[Any] = []
        if parsed.hostname in _LOOPBACK:
            handlers.append(urllib.request.ProxyHandler({}))  # never send localhost through a proxy
        self._opener = urllib.request.build_opener(*handlers)

    # -- plumbing ------------------------------------------------------------------

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None,
                 auth: bool = True, timeout_s: float | None = None) -> Any:
        url = self.base_url + path
        data = None if body is None else json.dumps(body).encode("utf-8")
        req = urllib.request.Request(url, data=data, method=method)  # noqa: S310 - http(s) checked in __init__
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if auth and self.token:
            req.add_header(protocol.TOKEN_HEADER, f"Bearer {self.token}")
        try:
            # Justification: the URL scheme is checked to be http(s) in __init__.
            with self._opener.open(req, timeout=timeout_s or self.timeout_s) as resp:  # nosec B310
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            detail = _detail(exc)
            raise BackendError(f"backend refused {method} {path} (HTTP {exc.code}): {detail}", exc.code) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise BackendUnavailable(f"cannot reach the backend at {self.base_url}: {reason}") from None
        if not raw:
            return None
        try:
            return json.loads(raw.decode("utf-8"))
        except ValueError:
            raise BackendError(f"backend sent a non-JSON answer to {method} {path}: {raw[:200]!r}") from None

    # -- endpoints -----------------------------------------------------------------

    def live(self, timeout_s: float = 5.0) -> bool:
        """True if ``GET /livez`` answers (no token needed)."""
        try:
            self._request("GET", protocol.PATH_LIVE, auth=False, timeout_s=timeout_s)
        except (BackendUnavailable, BackendError):
            return False
        return True

    def status(self) -> dict[str, Any]:
        """``GET /v1/status``: version, devices, models, queue."""
        return self._request("GET", protocol.PATH_STATUS)

    def submit(self, params: protocol.JobParams) -> protocol.JobInfo:
        """``POST /v1/jobs``: queue a job (detection, training data or training)."""
        return protocol.JobInfo.from_dict(self._request("POST", protocol.PATH_JOBS, body=protocol.job_body(params)))

    def events(self, job_id: str, since: int = 0) -> tuple[list[dict[str, Any]], int]:
        """``GET /v1/jobs/{id}/events?since=N``: the job's events after ``since`` and the count so far."""
        data = self._request("GET", protocol.PATH_JOB_EVENTS.format(job_id=job_id) + f"?since={int(since)}")
        data = data if isinstance(data, dict) else {}
        return list(data.get("events") or []), int(data.get("next", since))

    def job(self, job_id: str) -> protocol.JobInfo:
        """``GET /v1/jobs/{id}``."""
        return protocol.JobInfo.from_dict(self._request("GET", protocol.PATH_JOB.format(job_id=job_id)))

    def cancel(self, job_id: str) -> None:
        """``POST /v1/jobs/{id}/cancel`` (returns at once; the job ends as ``cancelled``)."""
        self._request("POST", protocol.PATH_JOB_CANCEL.format(job_id=job_id))

    def result(self, job_id: str) -> dict[str, Any]:
        """``GET /v1/jobs/{id}/result``: the run's summary (see ``protocol.SUMMARY_KEYS``)."""
        data = self._request("GET", protocol.PATH_JOB_RESULT.format(job_id=job_id))
        if isinstance(data, dict) and isinstance(data.get("summary"), dict):
            return data["summary"]
        return data

    def shutdown(self) -> None:
        """``POST /v1/shutdown``."""
        self._request("POST", protocol.PATH_SHUTDOWN, timeout_s=5.0)

    # -- a whole run ---------------------------------------------------------------

    def run_job(self, params: protocol.JobParams,
                on_progress: Callable[[protocol.JobProgress], None] | None = None,
                is_cancelled: Callable[[], bool] | None = None,
                poll_s: float = 0.3,
                on_event: Callable[[dict[str, Any]], None] | None = None,
                on_submitted: Callable[[protocol.JobInfo], None] | None = None) -> dict[str, Any]:
        """Submit ``params``, follow the job to its end and return the summary.

        Args:
            params: the job (validated here first).
            on_progress: called with each new progress report (from the calling thread).
            is_cancelled: polled between requests; when it returns True the job is cancelled.
            poll_s: seconds between status requests.
            on_event: called with each of the job's events, in order (training: start, step,
                val, note, checkpoint, end); none are missed between two polls.
            on_submitted: called once with the queued job's info (its message says what it waits for).

        Returns:
            The summary dict (``changed_area_m2``, ``changed_fraction``, ``outputs``, …).

        Raises:
            JobFailed: the backend reported the job as failed or lost (with its reason).
            JobCancelledError: the job was cancelled (by ``is_cancelled`` or on the server).
            BackendUnavailable / BackendError: the backend went away or refused the request.
        """
        params.validate()
        info = self.submit(params)
        if on_submitted is not None:
            on_submitted(info)
        cancel_sent = False
        last = None
        seen = 0
        while True:
            if is_cancelled is not None and is_cancelled() and not cancel_sent:
                self.cancel(info.job_id)
                cancel_sent = True
            info = self.job(info.job_id)
            progress = info.progress
            if on_event is not None and progress.events > seen:
                events, seen = self.events(info.job_id, seen)
                for event in events:
                    on_event(event)
            key = (progress.stage, progress.done, progress.total, info.state, progress.message, progress.events)
            if on_progress is not None and key != last:
                on_progress(progress)
                last = key
            if info.state in protocol.FINAL_JOB_STATES:
                break
            time.sleep(poll_s)
        if info.state == "cancelled":
            if info.kind == "detect" or not info.error:
                raise JobCancelledError("the run was cancelled; partial outputs were removed")
            raise JobCancelledError(info.error)
        if info.state == "failed":
            raise JobFailed(info.error or "the backend reported a failure without a reason; see its log")
        if info.state == "lost":  # the backend stopped while the job ran and was started again
            raise JobFailed(info.error or "the backend lost the job (it stopped while the job ran); run it again")
        return self.result(info.job_id)


def _detail(exc: urllib.error.HTTPError) -> str:
    try:
        payload = json.loads(exc.read().decode("utf-8"))
    except (ValueError, OSError):
        return exc.reason if isinstance(exc.reason, str) else str(exc)
    detail = payload.get("detail", payload) if isinstance(payload, dict) else payload
    if isinstance(detail, list):  # FastAPI validation errors: name the field
        parts = []
        for item in detail:
            if isinstance(item, dict):
                loc = item.get("loc") or []
                field = str(loc[-1]) if loc else ""
                parts.append(f"{field}: {item.get('msg', item)}" if field else str(item.get("msg", item)))
            else:
                parts.append(str(item))
        return "; ".join(parts)
    return str(detail)


def read_token(token_file: str) -> str:
    """The token stored in ``token_file`` (stripped), or "" when no file is given."""
    if not token_file:
        return ""
    try:
        with open(token_file, encoding="utf-8") as fh:
            return fh.read().strip()
    except OSError as exc:
        raise BackendUnavailable(f"cannot read the backend token file {token_file}: {exc.strerror}; "
                                 "check CHANGECLIP_TOKEN_FILE or the token file setting") from None
