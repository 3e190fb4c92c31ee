"""Fixtures of the training tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from levir_tiles import dataset_maker


@pytest.fixture
def make_dataset(data_dir: Path, tmp_path: Path) -> Callable[..., Path]:
    """Dataset folders cut from real LEVIR-CD tiles (see levir_tiles.dataset_maker)."""
    return dataset_maker(data_dir, tmp_path)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Train on one CPU thread: on a shared 2-core machine two threads per process oversubscribe the
    cores and run several times slower; the results do not depend on it (the tests compare runs made
    in the same setting)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
