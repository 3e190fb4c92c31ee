"""Helpers for the dataset tests: vector layers written with OGR, label/tile readers (imported by name)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from osgeo import gdal, ogr, osr

gdal.UseExceptions()
ogr.UseExceptions()

REPO = Path(__file__).resolve().parents[3]
NAIP_BEFORE = REPO / "resources" / "sample" / "naip_2015.tif"
NAIP_AFTER = REPO / "resources" / "sample" / "naip_2020.tif"
"""512 x 384 px, 5 m, EPSG:26914; the 2020 grid is shifted by (-1 m, +1 m), so it is warped."""
NAIP_ORIGIN = (486900.0, 5208495.0)
NAIP_PIXEL = 5.0


def srs(epsg: int) -> osr.SpatialReference:
    """An SRS with traditional x/y order."""
    s = osr.SpatialReference()
    s.ImportFromEPSG(epsg)
    s.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    return s


def write_layer(path: Path, wkts: Sequence[str], epsg: int | None = 26914, driver: str = "GPKG",
                name: str = "changes", geom_type: int = ogr.wkbPolygon, attrs: Sequence[str] | None = None,
                append: bool = False) -> Path:
    """Write geometries (WKT, in the layer's CRS) to a vector file; ``attrs`` fills a 'kind' field."""
    drv = ogr.GetDriverByName(driver)
    if path.exists() and not append:
        drv.DeleteDataSource(str(path))
    ds = drv.Open(str(path), 1) if append else drv.CreateDataSource(str(path))
    layer = ds.CreateLayer(name, srs(epsg) if epsg else None, geom_type)
    layer.CreateField(ogr.FieldDefn("kind", ogr.OFTString))
    for i, w in enumerate(wkts):
        f = ogr.Feature(layer.GetLayerDefn())
        f.SetGeometry(ogr.CreateGeometryFromWkt(w))
        f.SetField("kind", attrs[i] if attrs else "building")
        layer.CreateFeature(f)
    ds = None
    return path


def box(x0: float, y0: float, x1: float, y1: float) -> str:
    """WKT of a rectangle."""
    return f"POLYGON(({x0} {y0},{x1} {y0},{x1} {y1},{x0} {y1},{x0} {y0}))"


def reproject_wkt(wkt: str, src_epsg: int, dst_epsg: int) -> str:
    """A geometry's WKT in another CRS (OGR, vertices only)."""
    g = ogr.CreateGeometryFromWkt(wkt)
    g.Transform(osr.CoordinateTransformation(srs(src_epsg), srs(dst_epsg)))
    return g.ExportToWkt()


def rasterize_reference(vector: Path, like: Path, all_touched: bool = False, layer: str | None = None) -> np.ndarray:
    """gdal.Rasterize of a whole vector file onto the grid of raster ``like`` (1 inside, 0 outside)."""
    ref = gdal.Open(str(like))
    mem = gdal.GetDriverByName("MEM").Create("", ref.RasterXSize, ref.RasterYSize, 1, gdal.GDT_Byte)
    mem.SetGeoTransform(ref.GetGeoTransform())
    mem.SetProjection(ref.GetProjection())
    opts = gdal.RasterizeOptions(burnValues=[1], allTouched=all_touched, layers=[layer] if layer else None)
    gdal.Rasterize(mem, str(vector), options=opts)
    return mem.GetRasterBand(1).ReadAsArray()


def tile_offset(path: Path, origin: tuple[float, float] = NAIP_ORIGIN, pixel: float = NAIP_PIXEL) -> tuple[int, int]:
    """``(col, row)`` of a GeoTIFF tile's top-left pixel on a north-up grid."""
    gt = gdal.Open(str(path)).GetGeoTransform()
    return int(round((gt[0] - origin[0]) / pixel)), int(round((origin[1] - gt[3]) / pixel))


def read(path: Path) -> np.ndarray:
    """All bands of a raster."""
    return gdal.Open(str(path)).ReadAsArray()


def write_image(path: Path, arr: np.ndarray) -> Path:
    """Write a uint8 ``(H, W)`` or ``(C, H, W)`` array as PNG/GeoTIFF by extension (folders created)."""
    from changeclip.datasets.writing import write_tile

    path.parent.mkdir(parents=True, exist_ok=True)
    write_tile(path, np.asarray(arr, np.uint8))
    return path
