"""The naive baseline every speed figure is compared with.

It is the way the official test loop runs (``official-speed.md``): one pair at a time,
fp32, prompts tokenised and pushed through the text encoder for both dates on every
pair, and — end to end — read one tile, compute it, write it, then the next, with no
overlap between I/O and compute. Same network, same weights, same tile grid as the
optimised path it is compared with.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from changeclip.inference.predictor import LoadedModel
from changeclip.model import IMAGENET_MEAN, IMAGENET_STD
from changeclip.model.prompts import build_prompts, tokenize


class NaivePredictor:
    """Batch-1, fp32, uncached-text ChangeCLIP inference.

    Args:
        loaded: a model loaded with precision ``fp32`` and no channels-last layout.
        words: prompt words (empty = the constant prompts of prompt mode ``none``).
    """

    def __init__(self, loaded: LoadedModel, words: str = "") -> None:
        if loaded.precision != "fp32":
            raise ValueError("the naive baseline runs in fp32")
        self.loaded = loaded
        self.prompts = list(build_prompts([], words))
        dev = loaded.device
        self._mean = torch.tensor(IMAGENET_MEAN * 2, dtype=torch.float32, device=dev).view(1, 6, 1, 1)
        self._std = torch.tensor(IMAGENET_STD * 2, dtype=torch.float32, device=dev).view(1, 6, 1, 1)

    def predict_one(self, before: np.ndarray, after: np.ndarray) -> np.ndarray:
        """(1, 3, H, W) float32 0..255 pair -> (1, 2, H, W) float32 logits."""
        lm = self.loaded
        with torch.inference_mode():
            tokens = tokenize(self.prompts + self.prompts).to(lm.device)  # date A's and date B's prompts
            text = lm.model.encode_text(tokens).float().view(2, 1, 2, -1)
            a = torch.from_numpy(np.ascontiguousarray(before, np.float32)).to(lm.device)
            b = torch.from_numpy(np.ascontiguousarray(after, np.float32)).to(lm.device)
            x = (torch.cat([a, b], dim=1) - self._mean) / self._std
            logits = lm.model(x, text[0], text[1])
            return logits.float().cpu().numpy()

    def predict_logits(self, before: np.ndarray, after: np.ndarray) -> np.ndarray:
        """(N, 3, H, W) pairs one at a time -> (N, 2, H, W) logits."""
        return np.concatenate([self.predict_one(before[i:i + 1], after[i:i + 1]) for i in range(len(before))])


def naive_geotiff_detect(predictor: NaivePredictor, before: str | Path, after: str | Path, out_path: str | Path,
                         tile: int = 256, overlap: int = 64) -> int:
    """Read a tile of both rasters, predict, write its change probability, next tile.

    The same tile grid as the pipeline (stride ``tile − overlap``, last tile flush with the
    border); each tile writes its centre part (half the overlap trimmed where a neighbour
    exists). Output: a uint8 GeoTIFF of the change probability in percent on the before
    raster's grid. Bands 1..3 are read as RGB, values used as they are (0..255 data).

    Returns:
        The number of tiles.
    """
    from osgeo import gdal

    gdal.UseExceptions()
    da, db = gdal.Open(str(before)), gdal.Open(str(after))
    w, h = da.RasterXSize, da.RasterYSize
    drv = gdal.GetDriverByName("GTiff")
    out = drv.Create(str(out_path), w, h, 1, gdal.GDT_Byte, options=["TILED=YES", "COMPRESS=DEFLATE"])
    out.SetGeoTransform(da.GetGeoTransform())
    out.SetProjection(da.GetProjection())
    band = out.GetRasterBand(1)
    stride = tile - overlap
    half = overlap // 2

    def origins(n: int) -> list[int]:
        if n <= tile:
            return [0]
        pos = list(range(0, n - tile, stride)) + [n - tile]
        return sorted(set(pos))

    count = 0
    for y in origins(h):
        for x in origins(w):
            th, tw = min(tile, h), min(tile, w)
            a = da.ReadAsArray(x, y, tw, th, band_list=[1, 2, 3]).astype(np.float32)[None]
            b = db.ReadAsArray(x, y, tw, th, band_list=[1, 2, 3]).astype(np.float32)[None]
            logits = predictor.predict_one(a, b)
            prob = torch.from_numpy(logits).softmax(dim=1)[0, 1].numpy()
            y0 = half if y > 0 else 0
            x0 = half if x > 0 else 0
            y1 = th - half if y + th < h else th
            x1 = tw - half if x + tw < w else tw
            band.WriteArray(np.round(prob[y0:y1, x0:x1] * 100).astype(np.uint8), x + x0, y + y0)
            count += 1
    band.FlushCache()
    out = None
    return count
