"""Tiling, AND-merge and slide-averaging of the evaluation protocols."""

from __future__ import annotations

import numpy as np
import pytest

from changeclip.errors import InputError
from changeclip.evaluation import protocols as P


def pixelwise(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (b[:, 0] - a[:, 0]).astype(np.float32)


@pytest.mark.parametrize("protocol", P.PROTOCOLS)
@pytest.mark.parametrize("shape", [(256, 256), (320, 448), (96, 160), (300, 270)])
def test_pixelwise_score_is_stitched_exactly(protocol: str, shape: tuple[int, int]) -> None:
    if protocol != "levir-merge" and (shape[0] % 32 or shape[1] % 32) and max(shape) <= 256:
        pytest.skip("not a ChangeCLIP-sized image")
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 255, (3, *shape)).astype(np.float32)
    b = rng.uniform(0, 255, (3, *shape)).astype(np.float32)
    got = P.predict(protocol, a, b, pixelwise, 0.0, tile=256, batch_size=3)
    assert got.shape == shape
    np.testing.assert_array_equal(got, b[0] - a[0] > 0)


def test_levir_merge_layout_matches_official_counts() -> None:
    pads, windows = P.levir_merge_layout(1024, 1024)
    assert pads == (96, 96, 96, 96)
    assert len(windows) == 36
    assert max(y for y, _ in windows) + 256 == 1216


def test_slide_windows_like_mmseg() -> None:
    assert sorted({y for y, _ in P.slide_windows(1024, 1024)}) == [0, 128, 256, 384, 512, 640, 768]
    assert sorted({x for _, x in P.slide_windows(300, 300)}) == [0, 44]


class Voter:
    """Margin +1 for every window except the one with index ``veto``, which says -1."""

    def __init__(self, veto: int) -> None:
        self.veto = veto
        self.seen = 0

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        out = np.ones((a.shape[0], a.shape[2], a.shape[3]), np.float32)
        for i in range(a.shape[0]):
            if self.seen + i == self.veto:
                out[i] = -1
        self.seen += a.shape[0]
        return out


def test_levir_merge_is_an_and_rule() -> None:
    a = np.zeros((3, 512, 512), np.float32)
    (top, _, left, _), windows = P.levir_merge_layout(512, 512)
    veto = 4
    got = P.predict_levir_merge(a, a, Voter(veto), 0.0, batch_size=5)
    y, x = windows[veto]
    expected = np.ones((512, 512), bool)
    y0, x0 = max(y - top, 0), max(x - left, 0)
    expected[y0:y + 256 - top, x0:x + 256 - left] = False
    np.testing.assert_array_equal(got, expected)


def test_levir_slide_averages() -> None:
    a = np.zeros((3, 512, 512), np.float32)
    windows = P.slide_windows(512, 512)
    assert windows[0] == (0, 0)
    got = P.predict_levir_slide(a, a, Voter(0), 0.0, batch_size=4)
    # window 0 covers [0,256)^2: pixels covered by 1 window (-1 avg) or 2 (0 avg) are not change,
    # pixels covered by 4 windows ([128,256)^2: 3 say +1, one -1) are change.
    assert not got[:128, :128].any() and not got[:128, 128:256].any()
    assert got[128:256, 128:256].all()
    assert got[256:, 256:].all()


def test_bad_inputs() -> None:
    a = np.zeros((3, 64, 64), np.float32)
    with pytest.raises(InputError, match="protocol"):
        P.predict("nope", a, a, pixelwise, 0.0)
    with pytest.raises(InputError, match="one shape"):
        P.predict("tiles", a, a[:, :32], pixelwise, 0.0)
    with pytest.raises(InputError, match="expected"):
        P.predict("tiles", a, a, lambda x, y: np.zeros((1, 2, 2), np.float32), 0.0)
