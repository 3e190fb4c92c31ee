"""Training data: dataset folders -> tiles, the official joint augmentations, and the batch plan.

* :func:`load_training_data` reads one or more dataset folders through their manifests
  (:mod:`changeclip.datasets.manifest`, the only contract with the makers) and checks, before
  any work, everything a run would otherwise trip over later: empty splits, an all-zero label
  set, tiles of another size than the manifest says, label values other than 0/1/255, a
  crop larger than the tiles.
* :class:`TileDataset` reads a tile (GDAL: GeoTIFF or PNG) and applies the official train
  pipeline (spec §2.3) jointly to A, B and the label: rotation (p 0.5, uniform ±180°, images
  bilinear with 0 fill, label nearest with 255 fill), random crop (cat_max_ratio 0.75: up to
  10 tries for a crop whose largest class is under 75 % of its labelled pixels), horizontal
  then vertical flip (p 0.5 each), and photometric distortion drawn independently per date
  (brightness ±10, contrast 0.8-1.2, saturation 0.8-1.2, hue ±10 OpenCV units = ±20°). Two
  documented differences from mmseg: the crop rule is applied as mmseg intends (its bbox code
  uses the first image row), and hue/saturation are computed in RGB (mmseg converts RGB data
  as if it were BGR).
* :class:`DistributedBatchPlan` is the distributed sampler. Every random number of a sample is
  drawn from a generator seeded by (seed, position in the sample stream), and the stream is
  cut into global batches of ``batch x accumulate x processes`` tiles; micro-batch ``m`` of
  process ``r`` takes chunk ``m x processes + r`` of its step's global batch. So a run sees the
  same tiles, augmented the same way, whatever the number of workers, whether it was resumed,
  and however a global batch is split into processes and accumulation steps (2 GPUs x 20 equals
  1 GPU x 20 x accumulate 2).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from changeclip.datasets.manifest import IGNORE, Manifest, read_manifest
from changeclip.errors import InputError

log = logging.getLogger(__name__)

ROTATE_P = 0.5
ROTATE_DEGREES = 180.0
CAT_MAX_RATIO = 0.75
CROP_TRIES = 10
BRIGHTNESS_DELTA = 10.0
CONTRAST_RANGE = (0.8, 1.2)
SATURATION_RANGE = (0.8, 1.2)
HUE_DELTA = 10  # OpenCV 8-bit hue units (2 degrees each)
LABEL_VALUES = (0, 1, IGNORE)


@dataclass(frozen=True)
class TileRef:
    """One tile of one split of one dataset folder.

    Attributes:
        key: unique name ``<dataset hash prefix>/<split>/<tile>`` (tag cache, messages).
        before: path of the before image.
        after: path of the after image.
        label: path of the label.
        size: side in pixels (the manifest's tile_size).
    """

    key: str
    before: Path
    after: Path
    label: Path
    size: int


@dataclass
class TrainingData:
    """The dataset folders of a run, their tiles and what is recorded about them.

    Attributes:
        manifests: the parsed manifests, in the order given.
        train: training tiles of every folder.
        val: validation tiles of every folder.
        sha256: hash of the manifests (sorted), identifies the data of the run.
        train_pixels: label histogram of the training tiles ("0", "1", "255").
        val_pixels: same for validation.
    """

    manifests: list[Manifest]
    train: list[TileRef]
    val: list[TileRef]
    sha256: str
    train_pixels: dict[str, int] = field(default_factory=dict)
    val_pixels: dict[str, int] = field(default_factory=dict)

    @property
    def train_dataset(self) -> str | None:
        """The imagery's name for the weights metadata (names joined by '+'), or None."""
        names = [m.train_dataset for m in self.manifests if m.train_dataset]
        return "+".join(dict.fromkeys(names)) or None

    @property
    def gsd_m(self) -> float | None:
        """The common ground pixel size of the folders, or None when unknown or mixed (>5 % apart)."""
        values = [m.gsd_m for m in self.manifests]
        if not values or any(v is None for v in values):
            return None
        lo, hi = min(values), max(values)  # type: ignore[type-var]
        return float(values[0]) if hi <= lo * 1.05 else None  # type: ignore[operator]

    def describe(self) -> dict[str, Any]:
        """Summary for config.json and the log."""
        return {"folders": [str(m.root) for m in self.manifests], "sha256": self.sha256,
                "train_tiles": len(self.train), "val_tiles": len(self.val), "train_pixels": self.train_pixels,
                "val_pixels": self.val_pixels, "train_dataset": self.train_dataset, "gsd_m": self.gsd_m,
                "manifest_sha256": [m.sha256() for m in self.manifests]}


def _add(hist: dict[str, int], pixels: dict[str, int]) -> None:
    for k, v in pixels.items():
        hist[k] = hist.get(k, 0) + int(v)


def load_training_data(folders: Sequence[str | Path], crop: int, check_tiles: bool = True) -> TrainingData:
    """Read the dataset folders and check them before any work.

    Args:
        folders: dataset folders (``changeclip dataset`` output).
        crop: training crop side; every training tile must be at least this large.
        check_tiles: open every tile: sizes of A/B/label and the label values (0, 1, 255).

    Raises:
        InputError: not a dataset folder, empty train or val split, no change pixel in the
            training labels, tiles of the wrong size, unknown label values (the file is named),
            a crop larger than a folder's tiles, tiles not a multiple of 32 px.
    """
    manifests = []
    for folder in folders:
        manifests.append(read_manifest(folder))
    resolved = [m.root.resolve() for m in manifests]
    if len(set(resolved)) != len(resolved):
        raise InputError("the same dataset folder was given twice")
    train: list[TileRef] = []
    val: list[TileRef] = []
    train_px: dict[str, int] = {}
    val_px: dict[str, int] = {}
    for m in manifests:
        prefix = m.sha256()[:12]
        if m.tile_size % 32:
            raise InputError(f"{m.root}: tiles of {m.tile_size} px cannot go through the network (a multiple of 32 "
                             "is needed); make the dataset again with --tile 256")
        if crop > m.tile_size:
            raise InputError(f"--crop {crop} is larger than the {m.tile_size} px tiles of {m.root}; use --crop "
                             f"{m.tile_size} or less")
        for split, out, hist in (("train", train, train_px), ("val", val, val_px)):
            info = m.splits.get(split)
            if info is None:
                continue
            for name in info.tiles:
                a, b, lab = m.tile_paths(split, name)
                out.append(TileRef(f"{prefix}/{split}/{name}", a, b, lab, m.tile_size))
            _add(hist, info.pixels)
    roots = ", ".join(str(m.root) for m in manifests)
    if not train:
        raise InputError(f"no training tiles in {roots}: the train split is empty; make the dataset from more "
                         "imagery or labels")
    if not val:
        raise InputError(f"no validation tiles in {roots}: the val split is empty, so nothing can choose the best "
                         "weights; make the dataset again with --val-fraction above 0 (e.g. 0.15)")
    if train_px.get("1", 0) <= 0:
        raise InputError(f"the training labels of {roots} have no change pixel (histogram {train_px}): a network "
                         "trained on them can only learn 'no change'. Check the change polygons/labels (0/1 and "
                         "0/255 masks are both read by 'changeclip dataset')")
    digest = hashlib.sha256("\n".join(sorted(m.sha256() for m in manifests)).encode()).hexdigest()
    data = TrainingData(manifests, train, val, digest, train_px, val_px)
    if check_tiles:
        check_tile_files(train + val)
    return data


def _size(path: Path) -> tuple[int, int, int]:
    from osgeo import gdal

    gdal.UseExceptions()
    try:
        ds = gdal.Open(str(path))
    except RuntimeError as exc:
        raise InputError(f"cannot read tile {path}: {exc}") from None
    return ds.RasterXSize, ds.RasterYSize, ds.RasterCount


def read_label(path: Path) -> np.ndarray:
    """A label tile as (H, W) uint8 (0, 1, 255)."""
    from osgeo import gdal

    gdal.UseExceptions()
    try:
        ds = gdal.Open(str(path))
        arr = ds.GetRasterBand(1).ReadAsArray()
    except RuntimeError as exc:
        raise InputError(f"cannot read label {path}: {exc}") from None
    return np.asarray(arr)


def read_image(path: Path) -> np.ndarray:
    """An image tile as (3, H, W) float32 0..255 (the 8-bit RGB reader of ``changeclip eval``)."""
    from changeclip.evaluation.runner import read_rgb

    return read_rgb(path)


def check_tile_files(tiles: Sequence[TileRef]) -> None:
    """Sizes of every A/B/label file and the values of every label.

    Raises:
        InputError: naming the first file of another size, with other than 3 bands, or with
            label values other than 0, 1, 255.
    """
    for t in tiles:
        for path, bands in ((t.before, 3), (t.after, 3), (t.label, 1)):
            w, h, n = _size(path)
            if (w, h) != (t.size, t.size):
                raise InputError(f"{path} is {w}x{h} px but its dataset's tiles are {t.size}x{t.size} "
                                 "(dataset.json tile_size); make the dataset again")
            if n < bands:
                raise InputError(f"{path} has {n} band(s); dataset images need 3 (RGB)")
        values = np.unique(read_label(t.label))
        bad = [int(v) for v in values if int(v) not in LABEL_VALUES]
        if bad:
            raise InputError(f"label {t.label} holds values {bad} besides 0 (no change), 1 (change) and 255 "
                             "(ignore); make the dataset with 'changeclip dataset', which normalises 0/255 and 0/1 "
                             "masks")


# ------------------------------------------------------------------------------------------ augmentation

def _rgb_to_hsv(rgb: torch.Tensor) -> torch.Tensor:
    """(3, H, W) 0..1 RGB -> (3, H, W) with H in [0, 1), S, V in [0, 1]."""
    r, g, b = rgb[0], rgb[1], rgb[2]
    maxc, _ = rgb.max(dim=0)
    minc, _ = rgb.min(dim=0)
    delta = maxc - minc
    s = torch.where(maxc > 0, delta / maxc.clamp_min(1e-12), torch.zeros_like(maxc))
    safe = delta.clamp_min(1e-12)
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(delta > 0, (h / 6.0) % 1.0, torch.zeros_like(h))
    return torch.stack([h, s, maxc])


def _hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_rgb_to_hsv`."""
    h, s, v = hsv[0], hsv[1], hsv[2]
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    i = i.long() % 6
    r = torch.stack([v, q, p, p, t, v])
    g = torch.stack([t, v, v, q, p, p])
    b = torch.stack([p, p, t, v, v, q])
    idx = i.unsqueeze(0)
    return torch.stack([r.gather(0, idx)[0], g.gather(0, idx)[0], b.gather(0, idx)[0]])


def photometric(img: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """mmseg's PhotoMetricDistortion on one (3, H, W) float 0..255 image (each step with p 0.5)."""
    if rng.integers(2):
        img = (img + float(rng.uniform(-BRIGHTNESS_DELTA, BRIGHTNESS_DELTA))).clamp(0, 255)
    contrast_first = bool(rng.integers(2))

    def contrast(x: torch.Tensor) -> torch.Tensor:
        if rng.integers(2):
            x = (x * float(rng.uniform(*CONTRAST_RANGE))).clamp(0, 255)
        return x

    if contrast_first:
        img = contrast(img)
    do_sat, sat = bool(rng.integers(2)), float(rng.uniform(*SATURATION_RANGE))
    do_hue, hue = bool(rng.integers(2)), int(rng.integers(-HUE_DELTA, HUE_DELTA + 1))
    if do_sat or do_hue:
        hsv = _rgb_to_hsv(img / 255.0)
        if do_sat:
            hsv[1] = (hsv[1] * sat).clamp(0, 1)
        if do_hue:
            hsv[0] = (hsv[0] + hue / 180.0) % 1.0
        img = (_hsv_to_rgb(hsv) * 255.0).clamp(0, 255)
    if not contrast_first:
        img = contrast(img)
    return img


def _crop_origin(label: torch.Tensor, crop: int, rng: np.random.Generator) -> tuple[int, int]:
    h, w = label.shape
    y = x = 0
    for _ in range(CROP_TRIES):
        y = int(rng.integers(0, h - crop + 1))
        x = int(rng.integers(0, w - crop + 1))
        if h == crop and w == crop:
            break
        window = label[y:y + crop, x:x + crop]
        counts = torch.bincount(window[window != IGNORE].flatten(), minlength=2)
        counts = counts[counts > 0]
        if len(counts) > 1 and counts.max().item() / counts.sum().item() < CAT_MAX_RATIO:
            break
    return y, x


def augment(images: torch.Tensor, label: torch.Tensor, crop: int,
            rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The official joint train pipeline on one tile.

    Args:
        images: (6, H, W) float32 0..255, A then B.
        label: (H, W) int64 (0, 1, 255).
        crop: output side.
        rng: this sample's generator.

    Returns:
        (6, crop, crop) float32 and (crop, crop) int64.
    """
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    if rng.random() < ROTATE_P:
        angle = float(rng.uniform(-ROTATE_DEGREES, ROTATE_DEGREES))
        images = TF.rotate(images, angle, interpolation=InterpolationMode.BILINEAR, fill=0.0)
        label = TF.rotate(label.unsqueeze(0), angle, interpolation=InterpolationMode.NEAREST,
                          fill=float(IGNORE))[0]
    y, x = _crop_origin(label, crop, rng)
    images = images[:, y:y + crop, x:x + crop]
    label = label[y:y + crop, x:x + crop]
    if rng.random() < 0.5:
        images, label = images.flip(-1), label.flip(-1)
    if rng.random() < 0.5:
        images, label = images.flip(-2), label.flip(-2)
    images = torch.cat([photometric(images[:3], rng), photometric(images[3:], rng)])
    return images.contiguous(), label.contiguous()


class TileDataset(Dataset):
    """Training tiles; an item is addressed by ``(tile index, stream position)``.

    Args:
        tiles: the tiles.
        crop: crop side (a random crop of the tile; the whole tile when equal).
        seed: run seed (with the stream position, it seeds the sample's augmentations).
        augment: apply the official augmentations (False: only the crop, at the top-left
            corner when the tile is larger; for tests and debugging).

    Items are dicts: ``image`` (6, crop, crop) float32 0..255, ``label`` (crop, crop) int64,
    ``key`` the tile key.
    """

    def __init__(self, tiles: Sequence[TileRef], crop: int, seed: int, augment: bool = True) -> None:
        self.tiles = list(tiles)
        self.crop = int(crop)
        self.seed = int(seed)
        self.augment = bool(augment)

    def __len__(self) -> int:
        return len(self.tiles)

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The tile as stored: (6, H, W) float32 0..255 and (H, W) int64."""
        t = self.tiles[index]
        images = np.concatenate([read_image(t.before), read_image(t.after)])
        label = read_label(t.label).astype(np.int64)
        return torch.from_numpy(images), torch.from_numpy(label)

    def __getitem__(self, item: tuple[int, int]) -> dict[str, Any]:
        index, position = item
        images, label = self.load(index)
        if self.augment:
            rng = np.random.default_rng([self.seed, 1, position])
            images, label = augment(images, label, self.crop, rng)
        else:
            images, label = images[:, :self.crop, :self.crop], label[:self.crop, :self.crop]
        return {"image": images, "label": label, "key": self.tiles[index].key}


# ------------------------------------------------------------------------------------------ batch plan

def _seed_from(*entropy: int) -> int:
    return int(np.random.SeedSequence(list(entropy)).generate_state(1, dtype=np.uint64)[0] % (2**63 - 1))


class DistributedBatchPlan(Sampler):
    """The distributed sampler: which tiles every micro-batch of every process gets.

    The sample stream is the concatenation of per-epoch permutations of the tiles (epoch ``e``
    shuffled by a generator seeded with ``(seed, e)``). Optimizer step ``s`` consumes stream
    positions ``[s x G, (s + 1) x G)`` with ``G = batch x accumulate x world``; micro-batch ``m``
    of rank ``r`` takes the ``B`` positions of chunk ``c = m x world + r``.

    Iterating yields the micro-batches of this rank from ``start_step`` on, forever, as lists of
    ``(tile index, stream position)`` (a ``batch_sampler`` for a DataLoader).

    Args:
        n_tiles: training tiles.
        batch_size: tiles per micro-batch.
        accumulate: micro-batches per step and rank.
        world_size: processes.
        rank: this process.
        seed: run seed.
        start_step: first optimizer step to yield (resume).
    """

    def __init__(self, n_tiles: int, batch_size: int, accumulate: int, world_size: int, rank: int, seed: int,
                 start_step: int = 0) -> None:
        self.n = int(n_tiles)
        self.batch = int(batch_size)
        self.accumulate = int(accumulate)
        self.world = int(world_size)
        self.rank = int(rank)
        self.seed = int(seed)
        self.start_step = int(start_step)
        self._perms: dict[int, np.ndarray] = {}

    @property
    def global_batch(self) -> int:
        """Tiles per optimizer step over all processes."""
        return self.batch * self.accumulate * self.world

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) > 2:
                self._perms.pop(min(self._perms))
            self._perms[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return self._perms[epoch]

    def chunk(self, step: int, chunk: int) -> list[tuple[int, int]]:
        """``(tile index, stream position)`` of chunk ``chunk`` of step ``step``."""
        first = step * self.global_batch + chunk * self.batch
        out = []
        for pos in range(first, first + self.batch):
            epoch, offset = divmod(pos, self.n)
            out.append((int(self._perm(epoch)[offset]), pos))
        return out

    def chunk_of(self, micro: int) -> int:
        """This rank's chunk index for micro-batch ``micro`` of a step."""
        return micro * self.world + self.rank

    def torch_seed(self, step: int, micro: int) -> int:
        """Seed of torch's generator for one micro-batch (dropout, stochastic depth)."""
        return _seed_from(self.seed, 2, step, self.chunk_of(micro))

    def epoch_of(self, step: int) -> float:
        """Passes over the training tiles completed after ``step`` steps."""
        return step * self.global_batch / self.n

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step = self.start_step
        while True:
            for micro in range(self.accumulate):
                yield self.chunk(step, self.chunk_of(micro))
            step += 1


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack a micro-batch."""
    return {"image": torch.stack([i["image"] for i in items]), "label": torch.stack([i["label"] for i in items]),
            "key": [i["key"] for i in items]}
