"""A small standard-library HTTP client of ``changeclip serve`` (for scripts and tests).

Errors come back as our exceptions carrying the server's ``detail``:
:class:`ServerUnavailable` (no server at the URL), :class:`AuthenticationError`
(401), :class:`RequestRejected` (400/422: bad parameters or paths; an
:class:`~changeclip.errors.InputError`), :class:`ServerError` (anything else).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from changeclip import protocol
from changeclip.errors import ChangeClipError, InputError
from changeclip.protocol import JobInfo


class ServerError(ChangeClipError):
    """The server answered with an error. ``status`` is the HTTP status, ``detail`` its reason."""

    def __init__(self, message: str, status: int | None = None, detail: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail


class ServerUnavailable(ServerError):
    """No server answers at the URL (not started, stopped, or wrong URL)."""


class WaitTimeout(ServerError):
    """:meth:`ChangeClipClient.wait` gave up: the job is still queued or running."""


class AuthenticationError(ServerError):
    """The server refused the token (401)."""


class RequestRejected(InputError):
    """The server refused the request's parameters or paths (400 or 422)."""

    def __init__(self, message: str, status: int, detail: Any) -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail


def read_token(token_file: str | Path) -> str:
    """The token in ``token_file`` (first line).

    Raises:
        InputError: the file cannot be read or is empty.
    """
    path = Path(token_file).expanduser()
    try:
        lines = path.read_text(encoding="utf-8").split()
    except OSError as exc:
        raise InputError(f"cannot read token file {path}: {exc.strerror}; use the token_file of the "
                         "server's handshake line") from exc
    if not lines:
        raise InputError(f"token file {path} is empty")
    return lines[0]


class ChangeClipClient:
    """Talks to one running server.

    Args:
        url: base URL from the handshake line, e.g. ``http://127.0.0.1:41234``.
        token: the bearer token (see :func:`read_token`).
        timeout_s: per-request timeout in seconds.
    """

    def __init__(self, url: str, token: str, timeout_s: float = 30.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise InputError(f"server URL must start with http:// or https://, got {url!r}")
        self.url = url.rstrip("/")
        self._token = token
        self.timeout_s = timeout_s
        # No proxies: the server is local (or addressed directly), and a proxy must never see the token.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    @classmethod
    def from_handshake(cls, handshake: dict[str, Any], timeout_s: float = 30.0) -> ChangeClipClient:
        """A client for the server that printed ``handshake``."""
        return cls(handshake["url"], read_token(handshake["token_file"]), timeout_s=timeout_s)

    # -- endpoints -------------------------------------------------------------------

    def live(self) -> bool:
        """Whether the server answers its liveness probe (no token needed)."""
        try:
            return self._request("GET", protocol.PATH_LIVE, auth=False).get("status") == "ok"
        except ServerError:
            return False

    def status(self) -> dict[str, Any]:
        """Version, devices, loaded models and queue lengths."""
        return self._request("GET", protocol.PATH_STATUS)

    def submit(self, params: protocol.JobParams | dict[str, Any]) -> JobInfo:
        """Queue a job (detection, dataset or training parameters, or a raw body); returns its
        info (state ``queued``)."""
        body = dict(params) if isinstance(params, dict) else protocol.job_body(params)
        return JobInfo.from_dict(self._request("POST", protocol.PATH_JOBS, body))

    def events(self, job_id: str, since: int = 0) -> tuple[list[dict[str, Any]], int]:
        """The job's events after sequence number ``since``, and the count so far (the next ``since``)."""
        answer = self._request("GET", protocol.PATH_JOB_EVENTS.format(job_id=job_id) + f"?since={int(since)}")
        return list(answer.get("events") or []), int(answer.get("next", since))

    def job(self, job_id: str) -> JobInfo:
        """State and progress of one job."""
        return JobInfo.from_dict(self._request("GET", protocol.PATH_JOB.format(job_id=job_id)))

    def jobs(self) -> list[JobInfo]:
        """Every job the server remembers, oldest first."""
        return [JobInfo.from_dict(j) for j in self._request("GET", protocol.PATH_JOBS)["jobs"]]

    def cancel(self, job_id: str) -> JobInfo:
        """Ask the server to cancel a job; returns its info right after the request."""
        return JobInfo.from_dict(self._request("POST", protocol.PATH_JOB_CANCEL.format(job_id=job_id)))

    def result(self, job_id: str) -> dict[str, Any]:
        """``{"job_id", "outputs", "summary"}`` of a succeeded job (409 before that)."""
        return self._request("GET", protocol.PATH_JOB_RESULT.format(job_id=job_id))

    def shutdown(self) -> str:
        """Cancel every job and stop the server."""
        return str(self._request("POST", protocol.PATH_SHUTDOWN).get("detail", ""))

    def openapi(self) -> dict[str, Any]:
        """The server's OpenAPI document."""
        return self._request("GET", protocol.PATH_OPENAPI)

    def wait(self, job_id: str, poll_s: float = 0.5, timeout_s: float | None = None,
             on_progress: Callable[[JobInfo], None] | None = None) -> JobInfo:
        """Poll until the job is final; return its last info.

        Args:
            job_id: the job.
            poll_s: seconds between polls.
            timeout_s: give up after this many seconds (``None``: never).
            on_progress: called with every polled info.

        Raises:
            WaitTimeout: ``timeout_s`` passed (the job goes on).
            ServerError: the server went away.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            info = self.job(job_id)
            if on_progress is not None:
                on_progress(info)
            if info.state in protocol.FINAL_JOB_STATES:
                return info
            if deadline is not None and time.monotonic() > deadline:
                raise WaitTimeout(f"job {job_id} still {info.state} after {timeout_s:g} s")
            time.sleep(poll_s if deadline is None else max(0.0, min(poll_s, deadline - time.monotonic())))

    # -- transport -------------------------------------------------------------------

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None,
                 auth: bool = True) -> dict[str, Any]:
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        if auth:
            headers[protocol.TOKEN_HEADER] = f"Bearer {self._token}"
        request = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        try:
            with self._opener.open(request, timeout=self.timeout_s) as response:
                payload = response.read()
        except urllib.error.HTTPError as exc:
            raise _http_error(method, path, exc) from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ServerUnavailable(f"no answer from the changeclip server at {self.url}: {reason}; is "
                                    "'changeclip serve' running, and is this its URL?") from exc
        try:
            decoded = json.loads(payload) if payload else {}
        except json.JSONDecodeError as exc:
            raise ServerError(f"{method} {path}: the server sent invalid JSON") from exc
        if not isinstance(decoded, dict):
            raise ServerError(f"{method} {path}: expected a JSON object, got {type(decoded).__name__}")
        return decoded


def _http_error(method: str, path: str, exc: urllib.error.HTTPError) -> ServerError | RequestRejected:
    try:
        detail: Any = json.loads(exc.read() or b"{}").get("detail")
    except (json.JSONDecodeError, AttributeError, OSError):
        detail = None
    text = _detail_text(detail) or exc.reason
    message = f"{method} {path} -> {exc.code}: {text}"
    if exc.code == 401:
        return AuthenticationError(f"{message} (check the token file)", exc.code, detail)
    if exc.code in (400, 422):
        return RequestRejected(text, exc.code, detail)
    return ServerError(message, exc.code, detail)


def _detail_text(detail: Any) -> str:
    """FastAPI's ``detail`` (a string, or a list of {loc, msg}) as one line."""
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict):
                loc = [str(p) for p in item.get("loc", []) if p != "body"]
                parts.append(f"{'.'.join(loc) or 'body'}: {item.get('msg', '')}")
        return "; ".join(parts)
    return ""
