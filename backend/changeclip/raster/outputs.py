"""Output files: temporary names, block-wise GeoTIFF writing, COG conversion, polygons, atomic rename.

Every output is written under a hidden temporary name in its final folder (so the final rename
is atomic on the same file system): the mask and probability first as tiled, compressed
GeoTIFFs written block by block as rows finish, then converted to Cloud-Optimised GeoTIFFs with
overviews, then renamed. :class:`TempFiles` remembers every temporary path so that a failure or
a cancellation removes them all; nothing ever appears under a final name half-written.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
import uuid
from collections.abc import Callable, Mapping
from typing import Any
from xml.sax.saxutils import escape

import numpy as np
from osgeo import gdal, ogr

from changeclip.errors import JobCancelled, ModelError
from changeclip.protocol import MASK_CHANGE, MASK_NO_CHANGE, MASK_NODATA
from changeclip.raster.align import Grid
from changeclip.raster.area import PolygonArea

gdal.UseExceptions()
ogr.UseExceptions()
log = logging.getLogger(__name__)

PROB_NODATA_UINT8 = 255
PROB_NODATA_FLOAT = -1.0
BLOCK = 512


class TempFiles:
    """Temporary output paths next to their final paths; removed on :meth:`cleanup`."""

    def __init__(self) -> None:
        self._paths: list[str] = []
        self.token = uuid.uuid4().hex[:8]

    def new(self, final: str, tag: str = "tmp") -> str:
        """A new temporary path in ``final``'s folder keeping its extension."""
        folder, name = os.path.split(os.path.abspath(final))
        stem, ext = os.path.splitext(name)
        path = os.path.join(folder, f".{stem}.{self.token}.{tag}{ext}")
        self._paths.append(path)
        return path

    def commit(self, temp: str, final: str) -> None:
        """Rename ``temp`` to ``final`` (replacing it) atomically."""
        os.replace(temp, final)
        self._paths.remove(temp)

    def publish(self, pairs: list[tuple[str, str]]) -> None:
        """Rename every ``(temp, final)`` pair, all or nothing.

        Each final path that exists (an earlier result that ``overwrite`` replaces) is first kept
        under a hidden backup name (a hard link where the file system has them, so the final
        name never disappears; else a rename). If any rename fails, the finals already renamed
        are removed again and every backup is renamed back, so the folder is as it was; on
        success the backups are deleted.

        Raises:
            PublishError: A rename failed; its message says whether the earlier state was
                restored completely (and where a file that could not be restored was kept).
        """
        for _temp, final in pairs:  # only regular files are ever replaced (see changeclip.output_safety)
            try:
                mode = os.lstat(final).st_mode
            except FileNotFoundError:
                continue
            if not stat.S_ISREG(mode):
                raise PublishError(OSError(errno.EEXIST, "appeared during the run and is not a regular file", final),
                                   [])
        backups: list[tuple[str, str]] = []
        done: list[str] = []
        try:
            for temp, final in pairs:
                if os.path.lexists(final):
                    backup = self.new(final, "bak")
                    _keep_backup(final, backup)
                    backups.append((backup, final))
                os.replace(temp, final)
                self._paths.remove(temp)
                done.append(final)
        except OSError as exc:
            kept = self._roll_back(done, backups)
            raise PublishError(exc, kept) from None
        for backup, _final in backups:
            self._paths.remove(backup)
            try:
                os.remove(backup)
            except OSError as exc:  # pragma: no cover - best effort
                log.warning("could not remove the backup %s: %s", backup, exc)

    def _roll_back(self, done: list[str], backups: list[tuple[str, str]]) -> list[str]:
        """Undo a partial :meth:`publish`; return the backups that could not be restored."""
        backed_up = {final for _b, final in backups}
        for final in done:
            if final not in backed_up:
                try:
                    os.remove(final)
                except OSError as exc:
                    log.error("rolling back: could not remove the new %s: %s", final, exc)
        kept = []
        for backup, final in backups:
            try:
                if os.path.exists(final) and os.path.samefile(backup, final):
                    os.remove(backup)  # a hard link to the untouched final (renaming would do nothing)
                else:
                    os.replace(backup, final)
                self._paths.remove(backup)
            except OSError as exc:
                log.error("rolling back: could not restore %s from %s: %s", final, backup, exc)
                self._paths.remove(backup)  # never deleted by cleanup(): it holds the earlier result
                kept.append(backup)
        return kept

    def cleanup(self) -> None:
        """Remove every temporary file still present (and GDAL/SQLite side files)."""
        for path in self._paths:
            for p in (path, path + ".aux.xml", path + "-journal", path + "-wal", path + "-shm"):
                try:
                    os.remove(p)
                except FileNotFoundError:
                    pass
                except OSError as exc:  # pragma: no cover - best effort
                    log.warning("could not remove temporary file %s: %s", p, exc)
        self._paths.clear()


class PublishError(OSError):
    """The final renames failed and were rolled back (see :meth:`TempFiles.publish`)."""

    def __init__(self, cause: OSError, kept_backups: list[str]) -> None:
        what = f"{cause.strerror or cause} ({cause.filename})" if cause.filename else str(cause)
        if kept_backups:
            state = ("the new outputs were removed, but earlier outputs could not be put back; they are kept as "
                     + ", ".join(kept_backups))
        else:
            state = "no output was written and any earlier outputs are as they were"
        super().__init__(cause.errno, f"renaming the outputs to their final names failed: {what}; {state}")
        self.kept_backups = kept_backups


def _keep_backup(final: str, backup: str) -> None:
    """Keep ``final``'s current file as ``backup``: a hard link if possible, else a rename."""
    try:
        os.link(final, backup, follow_symlinks=False)
    except OSError:
        os.replace(final, backup)


def write_error(what: str, message: object) -> OSError:
    """An OSError for a failed GDAL write (ENOSPC when GDAL says the disk is full)."""
    text = str(message).strip()
    code = errno.ENOSPC if "no space left" in text.lower() or "disk full" in text.lower() else errno.EIO
    return OSError(code, f"writing {what} failed: {text}")


def _check_gdal_write(what: str) -> None:
    if gdal.GetLastErrorType() >= gdal.CE_Failure:
        msg = gdal.GetLastErrorMsg()
        gdal.ErrorReset()
        raise write_error(what, msg)


class BlockRasterWriter:
    """A one-band tiled, compressed GeoTIFF on ``grid``, written window by window.

    Blocks never written hold ``nodata`` (GDAL fills unwritten blocks with it on close).

    Args:
        path: Where to create it (a temporary name).
        grid: The reference grid.
        dtype: ``"uint8"`` or ``"float32"``.
        nodata: The nodata value.
    """

    def __init__(self, path: str, grid: Grid, dtype: str, nodata: float) -> None:
        gdt = gdal.GDT_Byte if dtype == "uint8" else gdal.GDT_Float32
        opts = ["TILED=YES", f"BLOCKXSIZE={BLOCK}", f"BLOCKYSIZE={BLOCK}", "COMPRESS=DEFLATE", "ZLEVEL=1",
                "BIGTIFF=IF_SAFER", "SPARSE_OK=FALSE"]
        if dtype == "float32":
            opts.append("PREDICTOR=3")
        self.path = path
        gdal.ErrorReset()
        self._ds = gdal.GetDriverByName("GTiff").Create(path, grid.width, grid.height, 1, gdt, options=opts)
        self._ds.SetGeoTransform(grid.geotransform)
        if grid.wkt:
            self._ds.SetProjection(grid.wkt)
        self._band = self._ds.GetRasterBand(1)
        self._band.SetNoDataValue(nodata)

    def write(self, array: np.ndarray, xoff: int, yoff: int) -> None:
        """Write a ``(h, w)`` array at pixel ``(xoff, yoff)``."""
        try:
            self._band.WriteArray(array, xoff, yoff)
        except RuntimeError as exc:
            raise write_error(self.path, exc) from None

    def close(self) -> None:
        """Flush and close; raise OSError if GDAL reported a write failure."""
        if self._ds is None:
            return
        try:
            self._ds.FlushCache()
            _check_gdal_write(self.path)
        except RuntimeError as exc:
            raise write_error(self.path, exc) from None
        finally:
            self._band = None
            self._ds = None


def to_cog(src: str, dst: str, resampling: str, progress: Callable[[float], None] | None = None,
           is_cancelled: Callable[[], bool] | None = None) -> None:
    """Convert a GeoTIFF to a COG (DEFLATE, 512 px blocks, overviews) at ``dst``.

    DEFLATE level 1 on all cores: on a 20k x 20k irmad run this step took 52 s at GDAL's default
    level 6 on one core and 11 s now, for files 2 % (probability) to 20 % (the small mask) larger.

    Args:
        src, dst: Source GeoTIFF and the COG to write (a temporary name).
        resampling: Overview resampling (``NEAREST`` for masks, ``AVERAGE`` for probabilities).
        progress: Called with the fraction done (0..1).
        is_cancelled: Polled while GDAL works; True aborts the conversion.

    Raises:
        OSError: GDAL could not write it (e.g. disk full).
        JobCancelled: ``is_cancelled()`` became True.
    """
    opts = ["COMPRESS=DEFLATE", "LEVEL=1", "NUM_THREADS=ALL_CPUS", "BLOCKSIZE=512", f"RESAMPLING={resampling}",
            "OVERVIEWS=IGNORE_EXISTING", "BIGTIFF=IF_SAFER"]
    callback = _gdal_callback(progress, is_cancelled)

    gdal.ErrorReset()
    try:
        out = gdal.Translate(dst, src, format="COG", creationOptions=opts, callback=callback)
        if out is None:
            raise RuntimeError(gdal.GetLastErrorMsg() or "unknown GDAL error")
        out.FlushCache()
        out = None
        _check_gdal_write(dst)
    except RuntimeError as exc:
        _gdal_failed(callback, is_cancelled)
        raise write_error(dst, exc) from None


class ChangeRasterWriter:
    """Writes the change mask and probability rows as they are released by the blender.

    Args:
        mask_path, prob_path: Temporary GeoTIFF paths.
        grid: The reference grid.
        prob_dtype: ``"uint8"`` (percent, 255 nodata) or ``"float32"`` (0..1, -1 nodata).
        threshold: Probability above which a pixel is change.
    """

    def __init__(self, mask_path: str, prob_path: str, grid: Grid, prob_dtype: str, threshold: float) -> None:
        self.threshold = float(threshold)
        self.prob_dtype = prob_dtype
        self.mask = BlockRasterWriter(mask_path, grid, "uint8", MASK_NODATA)
        self.prob = BlockRasterWriter(prob_path, grid, prob_dtype,
                                      PROB_NODATA_UINT8 if prob_dtype == "uint8" else PROB_NODATA_FLOAT)

    def write_rows(self, prob: np.ndarray, valid: np.ndarray, xoff: int, yoff: int) -> tuple[np.ndarray, np.ndarray]:
        """Write rows of the processed window.

        Args:
            prob: ``(n, w)`` float32 blended probability 0..1.
            valid: ``(n, w)`` bool.
            xoff, yoff: Position of the rows on the reference grid.

        Returns:
            ``(changed_per_row, valid_per_row)`` pixel counts, ``(n,)`` int64 each.
        """
        invalid = ~valid
        if not np.isfinite(prob[valid]).all():
            raise ModelError("the engine produced non-finite change probabilities (NaN or infinity); with "
                             "--precision fp16 or bf16 try fp32, otherwise the weights are broken (check them "
                             "with 'changeclip weights info'); no output was written")
        change = prob > self.threshold
        change &= valid
        mask = np.where(change, np.uint8(MASK_CHANGE), np.uint8(MASK_NO_CHANGE))  # uint8, no wide temporaries
        mask[invalid] = MASK_NODATA
        self.mask.write(mask, xoff, yoff)
        del mask
        p = np.clip(prob, 0.0, 1.0)
        if self.prob_dtype == "uint8":
            p *= 100.0
            np.rint(p, out=p)
            pu = p.astype(np.uint8)
            pu[invalid] = PROB_NODATA_UINT8
            self.prob.write(pu, xoff, yoff)
        else:
            p = p.astype(np.float32, copy=False)
            p[invalid] = PROB_NODATA_FLOAT
            self.prob.write(p, xoff, yoff)
        return change.sum(axis=1, dtype=np.int64), valid.sum(axis=1, dtype=np.int64)

    def close(self) -> None:
        """Close both files."""
        try:
            self.mask.close()
        finally:
            self.prob.close()


def _lut_vrt(mask_path: str, grid: Grid) -> str:
    """An in-memory VRT over the mask that reads 1 for change and 0 for everything else."""
    vrt = f"/vsimem/changeclip_{uuid.uuid4().hex}.vrt"
    srs = f"<SRS>{escape(grid.wkt)}</SRS>" if grid.wkt else ""
    gt = ", ".join(repr(v) for v in grid.geotransform)
    xml = (f'<VRTDataset rasterXSize="{grid.width}" rasterYSize="{grid.height}">{srs}'
           f"<GeoTransform>{gt}</GeoTransform>"
           '<VRTRasterBand dataType="Byte" band="1"><ComplexSource>'
           f'<SourceFilename relativeToVRT="0">{escape(os.path.abspath(mask_path))}</SourceFilename>'
           "<SourceBand>1</SourceBand>"
           f"<LUT>0:0,{MASK_CHANGE}:1,{MASK_CHANGE + 1}:0,255:0</LUT>"
           "</ComplexSource></VRTRasterBand></VRTDataset>")
    gdal.FileFromMemBuffer(vrt, xml.encode())
    return vrt


def polygonize(mask_path: str, out_path: str, grid: Grid, min_area_m2: float,
               progress: Callable[[float], None] | None = None,
               is_cancelled: Callable[[], bool] | None = None,
               attributes: Mapping[str, str | float] | None = None,
               probability_path: str | None = None, min_pixels: int = 0) -> dict[str, Any]:
    """Change polygons (mask == 1, 4-connected) into a GeoPackage with ``area_m2`` (and ``mean_prob``).

    Args:
        mask_path: The finished change mask GeoTIFF (values 0, 1, 255).
        out_path: The GeoPackage to create (a temporary name).
        grid: The reference grid (CRS for the layer and the area computation).
        min_area_m2: Polygons smaller than this are dropped.
        progress: Called with the fraction done (0..1) while polygonizing.
        is_cancelled: Polled while GDAL works; True aborts.
        attributes: Fields with the same value on every polygon (the run's provenance: input
            files, engine, model, prompt, threshold, time), so that polygons of several runs
            merged into one layer still say where they came from. Strings become text fields,
            numbers real fields.
        probability_path: The finished change-probability GeoTIFF (uint8 percent or float32
            0..1) on the same grid: adds ``mean_prob``, the mean change probability (0..1) of each
            polygon's pixels, the number to sort or filter polygons by confidence.
        min_pixels: Polygons of fewer than this many grid pixels are dropped too (counted from
            the polygon's planar area over the pixel's area, exact because polygons follow pixel
            edges; works without a CRS).

    Returns:
        ``{"count", "dropped", "area_m2"}``.

    Raises:
        OSError: Writing failed. JobCancelled: ``is_cancelled()`` became True.
    """
    callback = _gdal_callback(progress, is_cancelled)

    vrt = _lut_vrt(mask_path, grid)
    src = band = ds = layer = None
    try:
        src = gdal.Open(vrt)
        band = src.GetRasterBand(1)
        drv = ogr.GetDriverByName("GPKG")
        ds = drv.CreateDataSource(out_path)
        # The spatial index is built once at the end: kept up to date through the SetFeature
        # loop below it cost more than polygonizing (29 s vs 18 s for 478k polygons).
        layer = ds.CreateLayer("change_polygons", srs=grid.srs(), geom_type=ogr.wkbPolygon,
                               options=["SPATIAL_INDEX=NO"])
        layer.CreateField(ogr.FieldDefn("area_m2", ogr.OFTReal))
        constant = dict(attributes or {})
        for name, value in constant.items():
            layer.CreateField(ogr.FieldDefn(name, ogr.OFTString if isinstance(value, str) else ogr.OFTReal))
        ds.StartTransaction()
        gdal.Polygonize(band, band, layer, -1, [], callback=callback)
        ds.CommitTransaction()
        means = None
        if probability_path is not None:
            layer.CreateField(ogr.FieldDefn("mean_prob", ogr.OFTReal))
            means = _mean_per_polygon(ds, layer.GetName(), grid, probability_path, out_path, is_cancelled)
        measure = PolygonArea(grid)
        gt = grid.geotransform
        pixel_area = abs(gt[1] * gt[5] - gt[2] * gt[4]) or 1.0
        kept, dropped, total = 0, 0, 0.0
        drop: list[int] = []
        ds.StartTransaction()
        layer.ResetReading()
        for feat in layer:
            geometry = feat.GetGeometryRef()
            area = measure.area_m2(geometry)
            too_few = min_pixels > 0 and geometry.GetArea() / pixel_area < min_pixels - 0.5
            if too_few or (area is not None and area < min_area_m2):
                drop.append(feat.GetFID())
                continue
            feat.SetField("area_m2", area)
            for name, value in constant.items():
                feat.SetField(name, value)
            if means is not None and 0 < feat.GetFID() < len(means):
                feat.SetField("mean_prob", round(float(means[feat.GetFID()]), 4))
            layer.SetFeature(feat)
            kept += 1
            total += area or 0.0
        for fid in drop:
            layer.DeleteFeature(fid)
        dropped = len(drop)
        ds.CommitTransaction()
        ds.ReleaseResultSet(ds.ExecuteSQL(f"SELECT CreateSpatialIndex('{layer.GetName()}', "
                                          f"'{layer.GetGeometryColumn()}')"))
        ds.FlushCache()
        layer = None
        ds = None
        src = None
    except RuntimeError as exc:
        _gdal_failed(callback, is_cancelled)
        raise write_error(out_path, exc) from None
    finally:
        layer = ds = band = src = None  # closed here, not when an exception's traceback is freed later
        gdal.Unlink(vrt)
    return {"count": kept, "dropped": dropped, "area_m2": total}


_PIXELS_PER_READ = 4_000_000
"""Pixels per strip when summing probabilities per polygon (~50 MB of temporaries at most)."""


def _mean_per_polygon(ds: ogr.DataSource, layer_name: str, grid: Grid, probability_path: str, out_path: str,
                      is_cancelled: Callable[[], bool] | None) -> np.ndarray:
    """Mean probability (0..1) of each polygon's pixels, indexed by FID, in bounded memory.

    The polygons' FIDs are burnt into a temporary Int32 raster of the grid (compressed, beside
    ``out_path``; polygons follow pixel edges, so each pixel gets the FID of the polygon it came
    from), then the probability and FID rasters are read in strips of rows and summed per FID.
    """
    ids_path = f"{out_path}.fid.tif"
    geom = ds.GetLayerByName(layer_name).GetGeometryColumn()
    sql = ds.ExecuteSQL(f'SELECT fid + 0 AS pid, "{geom}" FROM "{layer_name}"')
    ids = prob_ds = band = id_band = None
    try:
        ids = gdal.GetDriverByName("GTiff").Create(ids_path, grid.width, grid.height, 1, gdal.GDT_Int32,
                                                   options=["TILED=YES", "COMPRESS=DEFLATE", "ZLEVEL=1",
                                                            "BIGTIFF=IF_SAFER", "SPARSE_OK=TRUE"])
        ids.SetGeoTransform(grid.geotransform)
        if grid.wkt:
            ids.SetProjection(grid.wkt)
        burn_callback = _gdal_callback(None, is_cancelled)
        try:
            gdal.RasterizeLayer(ids, [1], sql, options=["ATTRIBUTE=pid"], callback=burn_callback)
        except RuntimeError:
            _gdal_failed(burn_callback, is_cancelled)
            raise
        top = ds.ExecuteSQL(f'SELECT MAX(fid) FROM "{layer_name}"')
        count = int(top.GetNextFeature().GetField(0) or 0) + 1
        ds.ReleaseResultSet(top)
        sums = np.zeros(count, np.float64)
        pixels = np.zeros(count, np.int64)
        prob_ds = gdal.Open(probability_path)
        band = prob_ds.GetRasterBand(1)
        scale = 0.01 if band.DataType == gdal.GDT_Byte else 1.0
        id_band = ids.GetRasterBand(1)
        rows = max(1, _PIXELS_PER_READ // grid.width)
        for y in range(0, grid.height, rows):
            if is_cancelled is not None and is_cancelled():
                raise JobCancelled("the run was cancelled; partial outputs were removed")
            n = min(rows, grid.height - y)
            fid = id_band.ReadAsArray(0, y, grid.width, n).ravel()
            inside = fid > 0
            if inside.any():
                values = band.ReadAsArray(0, y, grid.width, n).ravel()[inside].astype(np.float64) * scale
                sums += np.bincount(fid[inside], weights=values, minlength=count)
                pixels += np.bincount(fid[inside], minlength=count)
        ids = prob_ds = None
    finally:
        band = id_band = ids = prob_ds = None  # closed before the file is removed
        ds.ReleaseResultSet(sql)
        if os.path.exists(ids_path):
            os.remove(ids_path)
    return np.divide(sums, pixels, out=np.full(count, np.nan), where=pixels > 0)


def write_json(path: str, data: dict[str, Any]) -> None:
    """Write ``data`` as indented JSON (to a temporary path; rename separately)."""
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, sort_keys=False)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())


def remove_empty_dirs(folders: list[str]) -> None:
    """Remove the given folders (deepest first) where they are empty."""
    for d in sorted(folders, key=len, reverse=True):
        try:
            os.rmdir(d)
        except OSError:
            pass


def _gdal_callback(progress: Callable[[float], None] | None,
                   is_cancelled: Callable[[], bool] | None) -> Callable[[float, object, object], int]:
    """A GDAL progress callback: reports whole-percent steps, returns 0 (stop) once cancelled."""
    last = [-1]

    def callback(fraction: float, _msg: object, _data: object) -> int:
        try:
            pct = int(fraction * 100)
            if progress is not None and pct != last[0]:
                last[0] = pct
                progress(fraction)
            return 0 if is_cancelled is not None and is_cancelled() else 1
        except KeyboardInterrupt:  # raised by a signal handler: stop GDAL, re-raised by _gdal_failed
            _INTERRUPTED.add(callback)
            return 0

    return callback


_INTERRUPTED: set[object] = set()
"""GDAL callbacks that caught a KeyboardInterrupt (GDAL cannot carry a Python exception)."""


def _gdal_failed(callback: object, is_cancelled: Callable[[], bool] | None) -> None:
    """After GDAL failed: re-raise an interruption the callback caught, or report a cancellation."""
    if callback in _INTERRUPTED:
        _INTERRUPTED.discard(callback)
        raise KeyboardInterrupt
    if is_cancelled is not None and is_cancelled():
        raise JobCancelled("the run was cancelled; partial outputs were removed")
