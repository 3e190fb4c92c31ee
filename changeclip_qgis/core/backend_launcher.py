"""Start, reuse, health-check and stop the backend service (``changeclip serve``).

The backend runs in its own interpreter (the venv made by "Set up backend…", or the one named
by ``CHANGECLIP_BACKEND_PYTHON``) as ``python -m changeclip serve``: started without a shell,
with an environment cleaned of QGIS's Python/GDAL/PROJ variables, and considered up once it
prints its one-line JSON handshake (:data:`protocol.HANDSHAKE_KEYS`). Its stderr is kept (the
last lines) for the diagnostics report. One backend per QGIS process is shared by the dock and
the Processing algorithm; it is stopped when the plugin unloads or the process exits, and it
stops itself (``--parent-pid``) if this process dies without stopping it.

A remote or already running server (``CHANGECLIP_BACKEND_URL`` + ``CHANGECLIP_TOKEN_FILE``) is
used as is and never started or stopped by the plugin.
"""

from __future__ import annotations

import atexit
import collections
import json
import os
import queue

# Justification: the backend is a separate process by design; argument lists only, no shell.
import subprocess  # nosec B404
import sys
import threading
import time
from dataclasses import dataclass, field

from . import protocol
from .client import BackendClient, read_token
from .errors import BackendUnavailable
from .log import log
from .settings import BackendConfig

STDERR_TAIL_LINES = 200

_DROP_ENV_PREFIXES = ("PYTHON", "PROJ_", "GDAL_", "QGIS_", "QT_", "SIP_", "OSGEO4W")
_DROP_ENV_NAMES = {"PROJ_LIB", "PROJ_DATA", "CPL_ZIP_ENCODING", "VIRTUAL_ENV", "__PYVENV_LAUNCHER__",
                   "LD_PRELOAD"}
_KEEP_ENV_NAMES = {"PYTHONIOENCODING", "PYTHONUNBUFFERED", "QT_QPA_PLATFORM"}


def clean_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for the backend: ``base`` (default ``os.environ``) without QGIS's
    Python/GDAL/PROJ/Qt settings, which would break another interpreter's imports."""
    env = {}
    for name, value in (os.environ if base is None else base).items():
        if name in _KEEP_ENV_NAMES or not (name in _DROP_ENV_NAMES or name.startswith(_DROP_ENV_PREFIXES)):
            env[name] = value
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    return env


def serve_command(python: str, parent_pid: int | None = None) -> list[str]:
    """The argument list that starts the backend service on a free loopback port.

    Args:
        python: the backend's interpreter.
        parent_pid: when given, the backend stops itself (``serve --parent-pid``, the same clean
            stop as SIGTERM) once this process is gone, e.g. when QGIS crashes or is killed.
    """
    cmd = [python, "-m", "changeclip", "serve", "--host", "127.0.0.1", "--port", "0"]
    if parent_pid is not None:
        cmd += ["--parent-pid", str(parent_pid)]
    return cmd


@dataclass
class Backend:
    """A reachable backend.

    Attributes:
        url: base URL.
        token_file: file holding its token ("" if none).
        client: a client for it.
        process: the process the plugin started (None for a remote/external server).
        handshake: the handshake dict it printed (empty for external servers).
        python: the interpreter it was started with ("" for external servers).
    """

    url: str
    token_file: str
    client: BackendClient
    process: subprocess.Popen | None = None
    handshake: dict = field(default_factory=dict)
    python: str = ""
    pumps: list[threading.Thread] = field(default_factory=list)

    @property
    def owned(self) -> bool:
        """True if the plugin started this backend (and so stops it)."""
        return self.process is not None


class BackendLauncher:
    """Owns at most one backend per QGIS process (thread-safe; shared by dock and Processing)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._backend: Backend | None = None
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self.last_command: list[str] = []
        self.last_error: str = ""
        atexit.register(self.stop)

    # -- public --------------------------------------------------------------------

    def stderr_tail(self) -> str:
        """The last lines the backend process wrote to stderr."""
        return "\n".join(self._stderr_tail)

    def current(self) -> Backend | None:
        """The backend in use, if any (no health check)."""
        return self._backend

    def ensure(self, config: BackendConfig | None = None) -> Backend:
        """Return a healthy backend, starting one if needed.

        Raises:
            BackendUnavailable: none configured, it does not start in time, or it is unreachable.
        """
        config = config or BackendConfig.load()
        with self._lock:
            current = self._backend
            if current is not None:
                same = current.url == config.url if config.url else current.python == config.python
                if same and self._healthy(current):
                    return current
                if same:
                    log("the backend did not answer the health check; starting a new one", "warning")
                self.stop()
            try:
                self._backend = self._connect(config) if config.url else self._start(config)
            except BackendUnavailable as exc:
                self.last_error = str(exc)
                raise
            self.last_error = ""
            return self._backend

    def stop_async(self) -> None:
        """:meth:`stop` in a background thread (for the GUI: stopping may take seconds)."""
        threading.Thread(target=self.stop, daemon=True, name="changeclip-backend-stop").start()

    def stop(self) -> None:
        """Stop the backend the plugin started (politely, then terminate, then kill)."""
        with self._lock:
            backend, self._backend = self._backend, None
        if backend is None or backend.process is None:
            return
        proc = backend.process
        if proc.poll() is None:
            try:
                backend.client.shutdown()
            except Exception as exc:  # noqa: BLE001 - best effort; terminate below
                log(f"backend shutdown request failed ({exc}); terminating it", "warning")
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
        for pump in backend.pumps:  # they end at EOF, now that the process has exited
            pump.join(timeout=5)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
        log(f"backend (pid {proc.pid}) stopped, exit code {proc.returncode}")

    # -- internals -----------------------------------------------------------------

    @staticmethod
    def _healthy(backend: Backend) -> bool:
        if backend.process is not None and backend.process.poll() is not None:
            return False
        return backend.client.live(timeout_s=5.0)

    def _connect(self, config: BackendConfig) -> Backend:
        client = BackendClient(config.url, read_token(config.token_file))
        if not client.live():
            raise BackendUnavailable(f"no backend answers at {config.url} (CHANGECLIP_BACKEND_URL / "
                                     "backend URL setting); start 'changeclip serve' there or clear the URL")
        client.status()  # checks the token
        return Backend(url=config.url, token_file=config.token_file, client=client)

    def _start(self, config: BackendConfig) -> Backend:
        if not config.python:
            raise BackendUnavailable(
                "no backend is set up: use 'Set up backend…' in the ChangeCLIP menu, or set the backend "
                "Python in the ChangeCLIP settings (or CHANGECLIP_BACKEND_PYTHON) to an interpreter that has "
                "the changeclip backend installed")
        if not os.path.isfile(config.python):
            raise BackendUnavailable(f"the backend Python {config.python} does not exist; run 'Set up "
                                     "backend…' again or fix the setting / CHANGECLIP_BACKEND_PYTHON")
        cmd = serve_command(config.python, parent_pid=os.getpid())
        self.last_command = list(cmd)
        self._stderr_tail.clear()
        env = clean_env()
        if config.weights_dir:
            env["CHANGECLIP_WEIGHTS_DIR"] = config.weights_dir
        log(f"starting backend: {' '.join(cmd)} (stops itself if QGIS dies)")
        creationflags = getattr(subprocess, "CREATE_NO_WINDOW", 0) if sys.platform == "win32" else 0
        try:
            # Justification: argument list, no shell; the interpreter is the one the user configured.
            proc = subprocess.Popen(  # nosec B603
                cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                cwd=os.path.expanduser("~"), creationflags=creationflags)
        except OSError as exc:
            raise BackendUnavailable(f"cannot run {config.python}: {exc.strerror}") from None
        lines: queue.Queue[str | None] = queue.Queue()
        pumps = [threading.Thread(target=_pump, args=(proc.stdout, lines.put, True), daemon=True,
                                  name="changeclip-backend-stdout"),
                 threading.Thread(target=_pump, args=(proc.stderr, self._stderr_tail.append), daemon=True,
                                  name="changeclip-backend-stderr")]
        for pump in pumps:
            pump.start()
        try:
            handshake = self._await_handshake(proc, lines, config.start_timeout_s)
        except BackendUnavailable:
            for pump in pumps:
                pump.join(timeout=5)
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
            raise
        url = str(handshake["url"]).rstrip("/")
        token_file = str(handshake.get("token_file") or "")
        client = BackendClient(url, read_token(token_file))
        log(f"backend ready at {url} (pid {proc.pid}, version {handshake.get('version')})")
        return Backend(url=url, token_file=token_file, client=client, process=proc, handshake=handshake,
                       python=config.python, pumps=pumps)

    def _await_handshake(self, proc: subprocess.Popen, lines: queue.Queue, timeout_s: float) -> dict:
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                proc.kill()
                proc.wait(timeout=10)
                raise BackendUnavailable(f"the backend did not report ready within {timeout_s:.0f} s; "
                                         "see Diagnostics for its output", self.stderr_tail())
            try:
                line = lines.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                continue
            if line is None:  # stdout closed: the process ended
                code = proc.wait(timeout=10)
                time.sleep(0.2)  # let the stderr pump catch up
                raise BackendUnavailable(_exit_message(code, self.stderr_tail()), self.stderr_tail())
            try:
                data = json.loads(line)
            except ValueError:
                self._stderr_tail.append(f"[stdout] {line}")
                continue
            if isinstance(data, dict) and data.get("event") == "ready" and data.get("url"):
                if data.get("protocol_version") not in (None, protocol.PROTOCOL_VERSION):
                    proc.kill()
                    raise BackendUnavailable(
                        f"the backend speaks protocol {data.get('protocol_version')}, this plugin "
                        f"{protocol.PROTOCOL_VERSION}; run 'Set up backend…' again to install the matching backend")
                return data


def _pump(stream, sink, signal_eof: bool = False) -> None:  # noqa: ANN001 - a binary pipe and a callable
    """Read ``stream`` line by line into ``sink`` until EOF (then ``sink(None)`` if ``signal_eof``)."""
    try:
        for raw in iter(stream.readline, b""):
            sink(raw.decode("utf-8", "replace").rstrip("\r\n"))
    except (OSError, ValueError):
        pass
    finally:
        if signal_eof:
            sink(None)


def _exit_message(code: int, stderr_tail: str) -> str:
    last = [ln for ln in stderr_tail.splitlines() if ln.strip()]
    hint = last[-1] if last else "no output"
    if "No module named changeclip" in stderr_tail or "No module named 'changeclip'" in stderr_tail:
        return ("the backend Python does not have the changeclip backend installed; run 'Set up backend…' "
                "or point the setting / CHANGECLIP_BACKEND_PYTHON at the right interpreter")
    return f"the backend exited (code {code}) before it was ready: {hint}. Click Diagnostics for details"


LAUNCHER = BackendLauncher()
"""The process-wide launcher shared by the dock, the tasks and the Processing algorithm."""


def configuration_problem(config: BackendConfig | None = None) -> str | None:
    """What is missing for a backend to be usable, without starting anything; None if nothing."""
    config = config or BackendConfig.load()
    if config.url:
        return None
    if not config.python:
        return ("ChangeCLIP backend is not set up: use 'Set up backend…' in the ChangeCLIP menu, or set "
                "CHANGECLIP_BACKEND_PYTHON (an interpreter with the changeclip backend) or "
                "CHANGECLIP_BACKEND_URL (a running 'changeclip serve')")
    if not os.path.isfile(config.python):
        return (f"ChangeCLIP backend Python {config.python} does not exist; run 'Set up backend…' again "
                "or fix the setting / CHANGECLIP_BACKEND_PYTHON")
    return None
