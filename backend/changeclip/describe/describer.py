"""The describe pass over a finished polygon layer: crops, CLIP, attributes, matching outputs.

Runs after polygonizing (stage ``describing``) on the temporary GeoPackage, before anything is
renamed to its final name, so a failure or a cancel leaves no half-described layer behind.
Memory is bounded: polygons are handled in chunks; only their envelopes and final scores are
kept for the whole layer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from osgeo import gdal, ogr

from changeclip.describe.crops import DEFAULT_CROP, CropSpec, crop_window
from changeclip.describe.encoder import ClipEncoder
from changeclip.describe.scoring import TextBank, score
from changeclip.describe.vocabulary import TEMPLATES, Query, Vocabulary, load_vocabulary, parse_query
from changeclip.errors import InputError, JobCancelled
from changeclip.protocol import MASK_CHANGE, MASK_NODATA
from changeclip.raster.align import Grid, Window
from changeclip.raster.area import PolygonArea
from changeclip.raster.io import GridReader
from changeclip.raster.scaling import BandScaling

log = logging.getLogger(__name__)

FIELDS = ("before_class", "before_p", "after_class", "after_p", "change_label")
QUERY_FIELDS = ("query_score", "matches_query")
CHUNK = 256
"""Polygons whose crops are read and embedded together."""
ARROW = " → "


@dataclass
class DescribeSetup:
    """What the pass needs besides the layer: readers on the grid, scaling, CLIP, words."""

    before: GridReader
    after: GridReader
    grid: Grid
    window: Window
    scaler: BandScaling
    encoder: ClipEncoder
    bank: TextBank
    query_threshold: float = 0.3
    crop: CropSpec = DEFAULT_CROP

    @property
    def vocabulary(self) -> Vocabulary:
        """The names CLIP chooses between."""
        return self.bank.vocabulary

    @property
    def query(self) -> Query | None:
        """The user's query, if any."""
        return self.bank.query


def load_words(encoder: ClipEncoder, vocabulary_file: str | None, query_text: str) -> TextBank:
    """Vocabulary and query, parsed and embedded: every error about them is raised here, before any work."""
    return TextBank.build(encoder, *parse_words(encoder, vocabulary_file, query_text))


def parse_words(encoder: ClipEncoder, vocabulary_file: str | None, query_text: str) -> tuple[Vocabulary, Query | None]:
    """Vocabulary and query, parsed and checked against CLIP's context length (not yet embedded).

    Raises:
        InputError: a bad vocabulary file, an empty query, or one too long for CLIP.
    """
    vocabulary = load_vocabulary(vocabulary_file)
    query = parse_query(query_text) if query_text.strip() else None
    if query is not None:
        for side in (query.before, query.after):
            if side is None:
                continue
            longest = max(encoder.token_count(t.format(side)) for t in TEMPLATES)
            if longest > encoder.context_length:
                raise InputError(f"the query {query.text!r} is too long for CLIP ({longest} tokens with its prompt "
                                 f"template; at most {encoder.context_length}): use a few words such as 'building'")
    return vocabulary, query


def _read_crop(reader: GridReader, scaler: BandScaling, win: Window) -> np.ndarray:
    """RGB 0..255 float32 (3, H, W) of a window; invalid pixels black."""
    data, valid = reader.read(win.xoff, win.yoff, win.width, win.height)
    rgb = scaler.apply(data)[:3]
    rgb[:, ~valid] = 0.0
    return rgb


def _check_cancel(cancelled: Callable[[], bool] | None) -> None:
    if cancelled is not None and cancelled():
        raise JobCancelled("the run was cancelled; partial outputs were removed")


def describe_polygons(gpkg_path: str, setup: DescribeSetup,
                      progress: Callable[[int, int], None] | None = None,
                      cancelled: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Add the describe attributes to every polygon of ``gpkg_path`` (updated in place).

    Returns:
        The ``describe`` part of summary.json: model, vocabulary, templates, query, counts and
        the matching area, and this pass's time.
    """
    started = time.perf_counter()
    report = progress or (lambda done, total: None)
    bank = setup.bank
    ds = ogr.Open(gpkg_path, update=1)
    if ds is None:
        raise OSError(f"cannot open {gpkg_path} to add the describe attributes")
    layer = ds.GetLayer(0)
    for name in FIELDS:
        kind = ogr.OFTString if name.endswith(("class", "label")) else ogr.OFTReal
        layer.CreateField(ogr.FieldDefn(name, kind))
    if setup.query is not None:
        layer.CreateField(ogr.FieldDefn("query_score", ogr.OFTReal))
        flag = ogr.FieldDefn("matches_query", ogr.OFTInteger)
        flag.SetSubType(ogr.OFSTBoolean)
        layer.CreateField(flag)
    items: list[tuple[int, Window]] = []
    layer.ResetReading()
    for feat in layer:
        items.append((feat.GetFID(), crop_window(feat.GetGeometryRef().GetEnvelope(), setup.grid, setup.window,
                                                 setup.crop)))
    total = len(items)
    report(0, total)
    names = setup.vocabulary.names
    matching = 0
    matching_area = 0.0
    measure = PolygonArea(setup.grid)
    for start in range(0, total, CHUNK):
        _check_cancel(cancelled)
        chunk = items[start:start + CHUNK]
        before = setup.encoder.encode_images([_read_crop(setup.before, setup.scaler, w) for _, w in chunk])
        after = setup.encoder.encode_images([_read_crop(setup.after, setup.scaler, w) for _, w in chunk])
        s = score(before, after, bank)
        ds.StartTransaction()
        for k, (fid, _) in enumerate(chunk):
            feat = layer.GetFeature(fid)
            b, a = names[s.before_idx[k]], names[s.after_idx[k]]
            feat.SetField("before_class", b)
            feat.SetField("before_p", round(s.before_p[k], 4))
            feat.SetField("after_class", a)
            feat.SetField("after_p", round(s.after_p[k], 4))
            feat.SetField("change_label", f"{b}{ARROW}{a}")
            if s.query_score is not None:
                q = s.query_score[k]
                match = q >= setup.query_threshold
                feat.SetField("query_score", round(q, 4))
                feat.SetField("matches_query", int(match))
                if match:
                    matching += 1
                    matching_area += measure.area_m2(feat.GetGeometryRef()) or 0.0
            layer.SetFeature(feat)
        ds.CommitTransaction()
        report(min(start + CHUNK, total), total)
    ds.FlushCache()
    layer = None
    ds = None
    info: dict[str, Any] = {
        "clip": setup.encoder.describe(),
        "vocabulary": {"source": setup.vocabulary.source, "size": len(names)},
        "templates": list(TEMPLATES),
        "crop": {"margin": setup.crop.margin, "min_crop_m": setup.crop.min_crop_m,
                 "min_crop_px": setup.crop.min_crop_px},
        "bands_used_as_rgb": setup.before.bands[:3],
        "polygons": total,
        "query": None,
        "seconds": round(time.perf_counter() - started, 3),
    }
    if setup.query is not None:
        info["query"] = {**setup.query.to_dict(), "threshold": setup.query_threshold, "matching": matching,
                         "matching_area_m2": matching_area if setup.grid.wkt else None}
    log.info("described %d polygons in %.1f s%s", total, info["seconds"],
             f"; {matching} match {setup.query.text!r}" if setup.query is not None else "")
    return info


def write_matching(gpkg_path: str, out_gpkg: str, mask_path: str, out_mask: str, grid: Grid) -> None:
    """The polygons with ``matches_query`` and a change mask of only their pixels (temporary names).

    ``out_mask`` is a plain GeoTIFF on ``grid``: 1 where a matching polygon covers a changed pixel,
    0 elsewhere, 255 where the full mask is nodata.
    """
    src = ogr.Open(gpkg_path)
    layer = src.GetLayer(0)
    sql = src.ExecuteSQL(f'SELECT * FROM "{layer.GetName()}" WHERE matches_query = 1')
    try:
        out = ogr.GetDriverByName("GPKG").CreateDataSource(out_gpkg)
        out.CopyLayer(sql, "change_polygons_matching")
        out = None
        burn = gdal.GetDriverByName("GTiff").Create(out_mask, grid.width, grid.height, 1, gdal.GDT_Byte,
                                                     options=["TILED=YES", "COMPRESS=DEFLATE", "ZLEVEL=1",
                                                              "BIGTIFF=IF_SAFER"])
        burn.SetGeoTransform(grid.geotransform)
        if grid.wkt:
            burn.SetProjection(grid.wkt)
        band = burn.GetRasterBand(1)
        band.SetNoDataValue(MASK_NODATA)
        band.Fill(0)
        sql.ResetReading()
        gdal.RasterizeLayer(burn, [1], sql, burn_values=[1])
    finally:
        src.ReleaseResultSet(sql)
    mask_ds = gdal.Open(mask_path)  # keep the dataset referenced while its band is read
    mask = mask_ds.GetRasterBand(1)
    rows = max(1, 4_000_000 // grid.width)
    for y in range(0, grid.height, rows):
        n = min(rows, grid.height - y)
        m = mask.ReadAsArray(0, y, grid.width, n)
        b = band.ReadAsArray(0, y, grid.width, n)
        outv = np.where(m == MASK_NODATA, MASK_NODATA, np.where((b == 1) & (m == MASK_CHANGE), 1, 0)).astype(np.uint8)
        band.WriteArray(outv, 0, y)
    band.FlushCache()
    band = burn = mask = mask_ds = None
