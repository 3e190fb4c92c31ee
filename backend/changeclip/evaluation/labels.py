"""Reading change masks and deciding how their values are encoded.

Reference masks come as 0/255 (LEVIR-CD, the official loader's expectation: it
integer-divides by 255, so 0/1 masks silently read as "no change anywhere") or as
0/1 (several WHU-CD distributions, mmseg prediction PNGs, our own ``change_mask.tif``
with 255 = nodata). This module looks at the values that actually occur in *all*
masks of a set and picks the encoding, or refuses with a message that says how to
choose one; it never guesses silently. The chosen encoding is reported.

Rules of ``auto`` (after removing each file's GDAL nodata value and any explicit
ignore values):

========================  =====================================================
values present            encoding
========================  =====================================================
only 0                    ``all-zero`` (no change pixel anywhere; both readings agree)
0 and/or 255              ``0/255`` (255 = change)
0 and/or 1                ``0/1`` (1 = change)
0/1 plus 255              ``0/1`` with 255 ignored (the mmseg "ignore" convention)
anything else             error: name ``--label-encoding`` / ``--ignore-value``
========================  =====================================================
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from changeclip.errors import InputError

ENCODINGS = ("auto", "0/255", "0/1", "any>0")
"""Values of ``--label-encoding``. ``any>0`` (every positive value is change, e.g. anti-aliased or
JPEG-damaged masks) is only ever given, never detected."""


@dataclass
class Mask:
    """One single-band mask as read from disk.

    Attributes:
        values: (H, W) integer array as stored.
        nodata: the band's GDAL nodata value, if any (pixels equal to it are ignored).
        geotransform: GDAL geotransform, or ``None`` for plain images (PNG/BMP without world file).
        crs_wkt: the CRS as WKT ("" if none).
    """

    values: np.ndarray
    nodata: int | None = None
    geotransform: tuple[float, ...] | None = None
    crs_wkt: str = ""


def read_mask(path: str | Path) -> Mask:
    """Read a change mask with GDAL (PNG, BMP, GeoTIFF, ... ).

    Multi-band masks are accepted only when every band is identical (e.g. RGB PNGs
    of a grey mask); band 1 is used.

    Raises:
        InputError: unreadable file, differing bands, or non-integer values.
    """
    from osgeo import gdal

    gdal.UseExceptions()
    try:
        ds = gdal.Open(str(path))
    except RuntimeError as exc:
        raise InputError(f"cannot read mask {path}: {exc}") from None
    if ds is None:  # pragma: no cover - UseExceptions raises instead
        raise InputError(f"cannot read mask {path}")
    band = ds.GetRasterBand(1)
    values = band.ReadAsArray()
    for i in range(2, ds.RasterCount + 1):
        other = ds.GetRasterBand(i).ReadAsArray()
        if not np.array_equal(other, values):
            if i == 4 and ds.GetRasterBand(i).GetColorInterpretation() == gdal.GCI_AlphaBand:
                continue
            raise InputError(f"mask {path} has {ds.RasterCount} bands that differ (band {i} != band 1); "
                             "give a single-band mask (values 0/255 or 0/1)")
    if not np.issubdtype(values.dtype, np.integer):
        if not np.all(np.isfinite(values)) or not np.all(values == np.round(values)):
            raise InputError(f"mask {path} holds non-integer values ({values.dtype}); a change mask must "
                             "hold class values such as 0/255 or 0/1, not probabilities — threshold it first")
        values = values.astype(np.int64)
    nd = band.GetNoDataValue()
    nodata = int(nd) if nd is not None and float(nd).is_integer() else None
    gt = ds.GetGeoTransform(can_return_null=True)
    return Mask(values=values, nodata=nodata, geotransform=tuple(gt) if gt else None,
                crs_wkt=ds.GetProjection() or "")


def present_values(mask: Mask, ignore_values: Iterable[int] = ()) -> set[int]:
    """The distinct values of a mask, without its nodata value and the ignore values."""
    skip = set(ignore_values)
    if mask.nodata is not None:
        skip.add(mask.nodata)
    return {int(v) for v in np.unique(mask.values)} - skip


@dataclass
class Encoding:
    """How a set of masks encodes change.

    Attributes:
        name: ``"0/255"``, ``"0/1"`` or ``"all-zero"``.
        change_value: the value meaning change (255, 1; 1 for all-zero, never present).
        ignore_values: values whose pixels are left out of the confusion matrix.
        values_found: distinct values seen over all masks (nodata excluded).
        how: ``"detected"`` or ``"given"`` (by ``--label-encoding``).
    """

    name: str
    change_value: int
    ignore_values: list[int] = field(default_factory=list)
    values_found: list[int] = field(default_factory=list)
    how: str = "detected"

    def decode(self, mask: Mask) -> tuple[np.ndarray, np.ndarray]:
        """Turn a mask into (change, valid) bool arrays of its shape.

        ``valid`` is False on the file's nodata value and on the ignore values.

        Raises:
            InputError: a value that is neither 0, the change value nor ignored.
        """
        v = mask.values
        valid = np.ones(v.shape, dtype=bool)
        for iv in self.ignore_values:
            valid &= v != iv
        if mask.nodata is not None:
            valid &= v != mask.nodata
        change = v > 0 if self.name == "any>0" else v == self.change_value
        bad = valid & ~change & (v != 0)
        if bad.any():
            odd = sorted({int(x) for x in np.unique(v[bad])})[:8]
            raise InputError(f"mask values {odd} are neither 0 (no change) nor {self.change_value} (change) under "
                             f"label encoding {self.name}; pass --ignore-value for them or fix the masks")
        return change & valid, valid

    def describe(self) -> dict[str, object]:
        """JSON-able summary for the report."""
        return {"label_encoding": self.name, "encoding_source": self.how,
                "ignore_values": list(self.ignore_values), "values_found": list(self.values_found)}


def detect_encoding(values: set[int], requested: str = "auto", ignore_values: Iterable[int] = (),
                    what: str = "reference masks") -> Encoding:
    """Choose the encoding of a set of masks from the union of their values.

    Args:
        values: distinct values over all masks (nodata and ignore values already removed).
        requested: ``auto``, ``0/255`` or ``0/1``.
        ignore_values: explicit ignore values (``--ignore-value``).
        what: name of the mask set for messages (``reference masks``, ``predictions``).

    Raises:
        InputError: unknown ``requested``, or values that fit no encoding.
    """
    ignore = sorted(set(int(i) for i in ignore_values))
    found = sorted(values)
    if requested not in ENCODINGS:
        raise InputError(f"label encoding must be one of {', '.join(ENCODINGS)}; got {requested!r}")
    if requested == "any>0":
        return Encoding("any>0", 1, ignore, found, how="given")
    if requested != "auto":
        change_value = 255 if requested == "0/255" else 1
        extra = sorted(values - {0, change_value})
        if extra:
            raise InputError(f"{what} hold values {extra[:8]} besides 0 and {change_value}, which label encoding "
                             f"{requested} does not allow; pass --ignore-value {extra[0]} to leave them out")
        return Encoding(requested, change_value, ignore, found, how="given")
    if values <= {0}:
        return Encoding("all-zero", 1, ignore, found)
    if values <= {0, 255}:
        return Encoding("0/255", 255, ignore, found)
    if values <= {0, 1}:
        return Encoding("0/1", 1, ignore, found)
    if values <= {0, 1, 255} and 1 in values:
        return Encoding("0/1", 1, sorted(set(ignore) | {255}), found)
    raise InputError(
        f"cannot tell how the {what} encode change: values found {found[:12]}"
        f"{' ...' if len(found) > 12 else ''}; expected 0/255 or 0/1. Pass --label-encoding 0/255 or 0/1 "
        "and --ignore-value for any value that marks unlabelled pixels")


def sparse_reference(changed: Mask, unchanged: Mask) -> tuple[np.ndarray, np.ndarray]:
    """Build a reference from two sparse masks (e.g. Taizhou's change.bmp / unchanged.bmp).

    A pixel is *changed* where ``changed`` is non-zero, *unchanged* where ``unchanged``
    is non-zero, and unlabelled (ignored) elsewhere. Nodata values count as unset.

    Returns:
        (change, valid): bool arrays (H, W).

    Raises:
        InputError: shapes differ, a pixel is marked both ways, or no pixel is labelled.
    """
    if changed.values.shape != unchanged.values.shape:
        raise InputError(f"changed mask {changed.values.shape} and unchanged mask {unchanged.values.shape} "
                         "differ in size; they must be on the same grid")

    def marked(m: Mask) -> np.ndarray:
        out = m.values != 0
        if m.nodata is not None:
            out &= m.values != m.nodata
        return out

    ch = marked(changed)
    un = marked(unchanged)
    both = int(np.count_nonzero(ch & un))
    if both:
        raise InputError(f"{both} pixels are marked both changed and unchanged; the sparse masks must not overlap")
    valid = ch | un
    if not valid.any():
        raise InputError("the changed and unchanged masks label no pixel at all (both are all zero)")
    return ch, valid
