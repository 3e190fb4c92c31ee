"""Static int8 quantisation of the exported graph, calibrated on the user's own tiles.

``--precision int8`` quantises the fp32 ONNX graph's convolutions and matrix products (weights per
channel, activations per tensor, QDQ format, so that both ONNX Runtime and OpenVINO run it) with
activation ranges calibrated on a few dozen tile pairs sampled from the valid overlap of the run's
own rasters. The quantised graph is cached like the fp32 one, keyed additionally by the SHA-256 of
the calibration tiles (the same rasters, tile size and scaling reuse it).

Its cost is measured, never assumed: :func:`mask_agreement` compares the int8 change mask with the
fp32 one on held-out tiles of the same rasters, and the run reports it in ``summary.json``.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np

from changeclip.inference.onnx_export import MANIFEST_VERSION, verified, write_entry

log = logging.getLogger(__name__)

CALIBRATION_TILES = 24
"""Tile pairs that calibrate the activation ranges."""

HELD_OUT_TILES = 8
"""Further tile pairs on which int8 is compared with fp32."""

QUANTISED_OPS = ["Conv", "MatMul", "Gemm"]


def calibration_key(x: np.ndarray, text_a: np.ndarray, text_b: np.ndarray) -> str:
    """SHA-256 of the calibration inputs (identifies an int8 graph in the cache)."""
    digest = hashlib.sha256()
    for arr in (x, text_a, text_b):
        digest.update(str(arr.shape).encode())
        digest.update(np.ascontiguousarray(arr, dtype=np.float32).tobytes())
    return digest.hexdigest()


def quantise(fp32_path: Path, out: Path, x: np.ndarray, text_a: np.ndarray, text_b: np.ndarray) -> None:
    """Write the statically quantised (QDQ, int8) graph of ``fp32_path`` to ``out``.

    Args:
        fp32_path: The fp32 ONNX graph.
        out: Output file.
        x: (N, 6, H, W) normalised calibration inputs.
        text_a, text_b: (N, 2, D) their text features.
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._i = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self._i >= x.shape[0]:
                return None
            sl = slice(self._i, self._i + 1)
            self._i += 1
            return {"x": np.ascontiguousarray(x[sl], dtype=np.float32),
                    "text_a": np.ascontiguousarray(text_a[sl], dtype=np.float32),
                    "text_b": np.ascontiguousarray(text_b[sl], dtype=np.float32)}

        def rewind(self) -> None:
            self._i = 0

    quantize_static(str(fp32_path), str(out), _Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    op_types_to_quantize=QUANTISED_OPS,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})


def cached_int8(fp32_path: Path, x: np.ndarray, text_a: np.ndarray, text_b: np.ndarray,
                fp32_manifest: dict[str, Any]) -> tuple[Path, float, bool]:
    """The int8 graph for these calibration tiles: from the cache (verified), else built now.

    Returns:
        ``(path, seconds spent building or 0, built)``.
    """
    key = calibration_key(x, text_a, text_b)
    path = fp32_path.with_name(fp32_path.name.replace("-fp32.onnx", f"-int8-{key[:16]}.onnx"))
    expect = {**fp32_manifest, "manifest_version": MANIFEST_VERSION, "kind": "int8", "calibration_sha256": key,
              "calibration_tiles": int(x.shape[0])}
    ok, why = verified(path, expect)
    if ok:
        log.info("runtime cache: using int8 graph %s", path)
        return path, 0.0, False
    if why != "not built yet":
        log.warning("int8 cache entry %s is not usable (%s): rebuilding it", path, why)
    log.warning("calibrating int8 on %d tile pairs of these rasters (once per rasters, tile size and scaling)",
                x.shape[0])
    seconds = write_entry(path, lambda tmp: quantise(fp32_path, tmp, x, text_a, text_b), expect)
    log.warning("int8 quantisation done in %.1f s; cached as %s", seconds, path)
    return path, seconds, True


def mask_agreement(p_int8: np.ndarray, p_fp32: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """How far the int8 change probabilities are from fp32's.

    Returns:
        ``mask_agreement`` (fraction of pixels with the same class at ``threshold``),
        ``mean_abs_prob_diff``, ``max_abs_prob_diff`` and ``pixels``.
    """
    same = (p_int8 > threshold) == (p_fp32 > threshold)
    diff = np.abs(p_int8.astype(np.float64) - p_fp32.astype(np.float64))
    return {"mask_agreement": float(same.mean()), "mean_abs_prob_diff": float(diff.mean()),
            "max_abs_prob_diff": float(diff.max()), "pixels": int(same.size), "threshold": float(threshold)}
