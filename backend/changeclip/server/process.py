"""Run the server process: bind, print the handshake line, serve until told to stop.

The handshake is exactly one JSON line on stdout (keys :data:`protocol.HANDSHAKE_KEYS`,
``event == "ready"``), printed once the socket accepts connections and the app has
started. Logs go to stderr only. The token is never printed: it is in ``token_file``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import re
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from typing import Any, TextIO

import uvicorn

from changeclip import __version__, protocol
from changeclip.errors import InputError
from changeclip.server.app import create_app
from changeclip.server.auth import prepare_token_file
from changeclip.server.journal import default_state_dir
from changeclip.server.parent_watch import ParentWatch
from changeclip.server.settings import ServerSettings
from changeclip.server.system import SystemInfo

log = logging.getLogger(__name__)


class _HandshakeServer(uvicorn.Server):
    """A uvicorn server that prints the handshake once it is listening."""

    def __init__(self, config: uvicorn.Config, handshake: dict[str, Any], out: TextIO) -> None:
        super().__init__(config)
        self._handshake = handshake
        self._out = out

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Like uvicorn's, but a SIGTERM/SIGINT ends in a normal return after the graceful
        shutdown (uvicorn re-raises the signal, which would skip removing the token file)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """Start as uvicorn does, then announce readiness."""
        await super().startup(sockets=sockets)
        if self.started and not self.should_exit:
            self._out.write(json.dumps(self._handshake) + "\n")
            self._out.flush()
            log.info("listening on %s (token file %s)", self._handshake["url"], self._handshake["token_file"])


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: the OS picks a free one).

    Raises:
        InputError: the address cannot be bound (in use, not local, malformed).
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        raise InputError(f"cannot resolve host {host!r}: {exc}; use an IP address such as 127.0.0.1") from exc
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise InputError(f"cannot listen on {host}:{port}: {exc.strerror}; choose another --port "
                         "(0 picks a free one)") from exc
    sock.set_inheritable(True)
    return sock


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def run_server(host: str = "127.0.0.1", port: int = 0, token_file: str | None = None, device: str = "auto",
               max_models: int = 2, max_model_memory_gb: float | None = None, verbose: bool = False,
               out: TextIO | None = None, parent_pid: int | None = None,
               state_dir: str | None = None) -> int:
    """Serve until ``/v1/shutdown``, SIGINT, SIGTERM or, with ``parent_pid``, that process's end.

    Args:
        host: address to bind (loopback unless given explicitly).
        port: TCP port; 0 lets the OS pick a free one (reported in the handshake).
        token_file: file holding the token (created with mode 0600 if it does not exist);
            ``None``: a new file in a private temporary folder, removed at exit.
        device: device for jobs that ask for ``auto``.
        max_models: most models kept loaded at once.
        max_model_memory_gb: bound on the models' memory per device (GiB), if any.
        verbose: log every request.
        out: where the handshake goes (default: stdout).
        parent_pid: when given, stop (cleanly, as on SIGTERM) within about a second of this
            process being gone; it must be running when the server starts.
        state_dir: folder of the job journal (default: :func:`journal.default_state_dir`).

    Returns:
        Exit status (0 after a clean shutdown).

    Raises:
        InputError: bad host, port, token file, parent pid or state folder.
    """
    if not 0 <= port <= 65535:
        raise InputError(f"--port must be 0..65535, got {port}")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        raise InputError(f"--device must be {protocol.DEVICES_HELP}, got {device!r}")
    if max_models < 1:
        raise InputError(f"--max-models must be at least 1, got {max_models}")
    if max_model_memory_gb is not None and not max_model_memory_gb > 0:
        raise InputError(f"--max-model-memory-gb must be a positive number, got {max_model_memory_gb}")
    parent = ParentWatch(parent_pid) if parent_pid is not None else None
    tokens = prepare_token_file(token_file)
    try:
        settings = ServerSettings(token=tokens.token, default_device=device, max_models=max_models,
                                  max_model_memory_gb=max_model_memory_gb,
                                  state_dir=str(state_dir or default_state_dir()))
        sock = bind_socket(host, port)
        bound_host, bound_port = sock.getsockname()[:2]
        if not _is_loopback(bound_host):
            log.warning("listening on %s, reachable from other machines; the token travels in clear text over "
                        "plain HTTP, so only do this on a trusted network or behind TLS", bound_host)
        url_host = f"[{bound_host}]" if ":" in bound_host else bound_host
        handshake = {"event": "ready", "url": f"http://{url_host}:{bound_port}", "port": bound_port,
                     "token_file": str(tokens.path), "pid": os.getpid(), "version": __version__,
                     "protocol_version": protocol.PROTOCOL_VERSION}
        system = SystemInfo(device)
        if device != "auto":
            system.resolve_device("auto")  # fail now (exit 2) if the device does not exist here
        app = create_app(settings, system=system)
        config = uvicorn.Config(app, log_config=None, access_log=verbose, lifespan="on",
                                timeout_graceful_shutdown=max(5, int(settings.shutdown_timeout_s)),
                                server_header=False)
        server = _HandshakeServer(config, handshake, out or sys.stdout)

        def request_shutdown() -> None:
            server.should_exit = True

        app.state.request_shutdown = request_shutdown
        if parent is not None:
            parent.start(request_shutdown)
        server.run(sockets=[sock])
        return 0
    finally:
        if parent is not None:
            parent.stop()
        tokens.remove()
