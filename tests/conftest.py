"""Fixtures shared by the backend and plugin tests."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Every server a test starts (directly or through the plugin) keeps its job journal in a
# private folder of this test session, never in the user's ~/.local/state/changeclip.
os.environ.setdefault("CHANGECLIP_STATE_DIR", tempfile.mkdtemp(prefix="changeclip-test-state-"))


def _shared_dir() -> Path:
    return Path(os.environ.get("CHANGECLIP_SHARED_DIR", REPO_ROOT.parent / "shared")).resolve()


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository's root folder."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The team's reference folder (../shared, or $CHANGECLIP_SHARED_DIR). Missing = failure."""
    path = _shared_dir()
    if not path.is_dir():
        pytest.fail(f"reference folder {path} is missing; set CHANGECLIP_SHARED_DIR to it")
    return path


@pytest.fixture(scope="session")
def parity_dir(shared_dir: Path) -> Path:
    """The parity kit (reference outputs of the official implementation)."""
    path = Path(os.environ.get("CHANGECLIP_PARITY_DIR", shared_dir / "parity"))
    if not (path / "README.md").is_file():
        pytest.fail(f"parity kit not found at {path}; set CHANGECLIP_PARITY_DIR")
    return path


@pytest.fixture(scope="session")
def data_dir(shared_dir: Path) -> Path:
    """Sample imagery (research-only; never copied into the repo)."""
    return shared_dir / "data"


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory):
    """A function ``make(variant) -> Path`` of a native weights file with seeded TINY weights.

    ``variant`` is ``"tiny-rn50"`` or ``"tiny-vit"``; the file holds ``seeded_state_dict(cfg, 0)``
    (the parity kit's rule) and is made once per session.
    """
    from changeclip.model.config import PRESETS
    from changeclip.weights.native import save_weights
    from changeclip.weights.seeded import seeded_state_dict

    folder = tmp_path_factory.mktemp("tiny_weights")
    made: dict[str, Path] = {}

    def make(variant: str) -> Path:
        if variant not in ("tiny-rn50", "tiny-vit"):
            raise ValueError(f"tiny_weights: unknown variant {variant!r}; use 'tiny-rn50' or 'tiny-vit'")
        if variant not in made:
            cfg = PRESETS[variant]
            path = folder / f"{variant}-seeded0.safetensors"
            save_weights(seeded_state_dict(cfg, seed=0), cfg, path, meta={"source": "seeded", "seed": 0})
            made[variant] = path
        return made[variant]

    return make
