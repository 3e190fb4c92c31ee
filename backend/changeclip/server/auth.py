"""Bearer-token authentication of the backend server, and its token file.

The token is a random string made per start (or read from a file the launcher
provides). It is never printed or logged: ``changeclip serve`` writes it into a file
readable only by its owner (mode 0600) and names that file in its handshake line.
Every request except the liveness probe must carry ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from changeclip.errors import InputError

log = logging.getLogger(__name__)

TOKEN_BYTES = 32
MIN_TOKEN_LENGTH = 16


def new_token() -> str:
    """A fresh random token (URL-safe, 43 characters, 256 bits)."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def token_matches(header_value: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header value carries ``token`` (constant-time compare).

    Args:
        header_value: the raw header value, e.g. ``"Bearer abc..."``, or ``None``.
        token: the server's token.

    Returns:
        True only for ``Bearer <token>`` (scheme case-insensitive) with the exact token.
    """
    if not header_value:
        return False
    scheme, _, value = header_value.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(value.strip().encode("utf-8", "surrogateescape"), token.encode("utf-8"))


@dataclass
class TokenFile:
    """The token and the file holding it.

    Attributes:
        token: the token.
        path: the file it is in.
        created: whether this process created the file (and so removes it at exit).
        private_dir: a private temporary folder made for the file (removed at exit), if any.
    """

    token: str
    path: Path
    created: bool
    private_dir: Path | None = None

    def remove(self) -> None:
        """Delete what this process created (the default token file and its folder)."""
        if self.private_dir is not None:
            shutil.rmtree(self.private_dir, ignore_errors=True)
        elif self.created:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass


def prepare_token_file(path: str | os.PathLike[str] | None) -> TokenFile:
    """Read the token from ``path``, or create a token file there (or in a private temp dir).

    Args:
        path: ``None``: a new random token in a new private temporary folder (mode 0700)
            and file (mode 0600). An existing file: its first line is the token; it must
            not be readable by group or others. A path that does not exist: a new random
            token is written there (mode 0600).

    Returns:
        The token and its file.

    Raises:
        InputError: the file is empty, too short, readable by others, or cannot be written.
    """
    if path is None:
        private = Path(tempfile.mkdtemp(prefix="changeclip-serve-"))
        os.chmod(private, 0o700)
        file = private / "token"
        token = new_token()
        _write_private(file, token)
        return TokenFile(token=token, path=file, created=True, private_dir=private)
    file = Path(path).expanduser().absolute()
    if file.exists():
        if not file.is_file():
            raise InputError(f"token file {file} is not a regular file; give a file path to --token-file")
        st = file.stat()
        mode = stat.S_IMODE(st.st_mode)
        if hasattr(os, "getuid") and st.st_uid != os.getuid():
            raise InputError(f"token file {file} belongs to another user (uid {st.st_uid}); use a file of your own")
        if mode & 0o077:
            raise InputError(f"token file {file} is accessible by other users (mode {mode:04o}); "
                             f"run 'chmod 600 {file}' or let the server create a new file")
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"cannot read token file {file}: {exc}") from exc
        token = text.strip().splitlines()[0].strip() if text.strip() else ""
        if len(token) < MIN_TOKEN_LENGTH or any(c.isspace() for c in token):
            raise InputError(f"token file {file} must hold one token of at least {MIN_TOKEN_LENGTH} "
                             "characters without spaces on its first line; delete it to get a new one")
        return TokenFile(token=token, path=file, created=False)
    if not file.parent.is_dir():
        raise InputError(f"cannot create token file {file}: folder {file.parent} does not exist")
    token = new_token()
    _write_private(file, token)
    return TokenFile(token=token, path=file, created=True)


def _write_private(file: Path, token: str) -> None:
    """Create ``file`` with mode 0600 (never following or replacing an existing file)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(file, flags, 0o600)
    except OSError as exc:
        raise InputError(f"cannot create token file {file}: {exc.strerror}") from exc
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(token + "\n")
    os.chmod(file, 0o600)
