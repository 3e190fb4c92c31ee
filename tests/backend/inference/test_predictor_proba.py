"""predict_proba takes the softmax on the device: same values as the softmax of predict_logits."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from changeclip.inference.predictor import ChangeCLIPPredictor, load_model


def test_proba_is_class1_softmax_of_logits(tiny_weights: Callable[[str], Path]) -> None:
    pred = ChangeCLIPPredictor(load_model(tiny_weights("tiny-rn50"), device="cpu"), "none", batch_size=2)
    rng = np.random.default_rng(5)
    a = rng.uniform(0, 255, (3, 3, 64, 64)).astype(np.float32)  # 3 pairs: a full and a partial batch
    b = rng.uniform(0, 255, (3, 3, 64, 64)).astype(np.float32)
    logits = pred.predict_logits(a, b)
    proba = pred.predict_proba(a, b)
    assert logits.shape == (3, 2, 64, 64) and proba.shape == (3, 64, 64) and proba.dtype == np.float32
    expected = torch.from_numpy(logits).softmax(dim=1)[:, 1].numpy()
    np.testing.assert_allclose(proba, expected, rtol=0, atol=1e-6)
    assert pred.tiles_seen == 6
