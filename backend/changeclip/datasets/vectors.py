"""Polygon layers for training labels: open and check, reproject onto the grid, rasterise per tile.

Any OGR polygon layer is accepted (GeoPackage, Shapefile, GeoJSON, FlatGeobuf …) in any CRS.
The layer is reprojected once by GDAL/OGR into the reference grid's CRS (an in-memory layer),
then burnt into each tile with ``gdal.RasterizeLayer`` under a spatial filter on the tile's
extent: a pixel is inside when its centre is (``all_touched`` off) or when the polygon touches
it at all (``all_touched`` on), exactly as ``gdal_rasterize`` decides.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from osgeo import gdal, ogr, osr

from changeclip.errors import InputError
from changeclip.raster import align

gdal.UseExceptions()
ogr.UseExceptions()

_POLYGONAL = {ogr.wkbPolygon, ogr.wkbMultiPolygon, ogr.wkbCurvePolygon, ogr.wkbMultiSurface}


@dataclass
class PolygonLayer:
    """Polygons reprojected into the grid's CRS, held in memory.

    Attributes:
        path: The source file.
        layer_name: Name of the layer read from it.
        crs_wkt: The source layer's CRS.
        count: Polygons kept (after ``where``, without empty geometries).
        dataset: The in-memory OGR data source (grid CRS) that keeps ``layer`` alive.
        layer: The in-memory layer.
    """

    path: str
    layer_name: str
    crs_wkt: str
    count: int
    dataset: ogr.DataSource
    layer: ogr.Layer

    def bounds(self) -> tuple[float, float, float, float]:
        """``(xmin, ymin, xmax, ymax)`` of all polygons in the grid's CRS."""
        xmin, xmax, ymin, ymax = self.layer.GetExtent()
        return xmin, ymin, xmax, ymax

    def geometries(self) -> list[ogr.Geometry]:
        """Clones of every polygon (grid CRS)."""
        self.layer.SetSpatialFilter(None)
        self.layer.ResetReading()
        return [f.GetGeometryRef().Clone() for f in self.layer]

    def count_intersecting(self, area: ogr.Geometry) -> int:
        """How many polygons intersect ``area`` (grid CRS)."""
        return sum(1 for g in self.geometries() if g.Intersects(area))


def _is_polygonal(geom_type: int) -> bool:
    return ogr.GT_Flatten(geom_type) in _POLYGONAL


def open_polygon_layer(path: str, role: str, option: str, grid: align.Grid, layer_name: str | None = None,
                       where: str | None = None) -> PolygonLayer:
    """Open a polygon layer, check it and reproject it into ``grid``'s CRS.

    Args:
        path: Any OGR vector source.
        role: ``changes`` or ``AOI`` (for messages).
        option: The option that picks the layer (``--layer``, ``--aoi-layer``), for messages.
        grid: The reference grid (must have a CRS).
        layer_name: The layer to read; needed when the source holds several.
        where: An OGR SQL attribute filter (``--where``).

    Raises:
        InputError: not a vector source, ambiguous or unknown layer, no CRS, non-polygon
            geometries, an invalid ``where``, or no polygon at all.
    """
    if not path.startswith("/vsi") and not os.path.exists(path):
        raise InputError(f"{role} layer not found: {path!r}; check the path")
    try:
        src = gdal.OpenEx(path, gdal.OF_VECTOR | gdal.OF_READONLY)
    except RuntimeError as exc:
        raise InputError(f"{role} file {path!r} is not a vector layer GDAL can read ({str(exc).strip()}); give a "
                         "GeoPackage, Shapefile, GeoJSON or another OGR format") from None
    if src is None or src.GetLayerCount() == 0:
        raise InputError(f"{role} file {path!r} holds no vector layer; give a polygon layer")
    names = [src.GetLayerByIndex(i).GetName() for i in range(src.GetLayerCount())]
    if layer_name is not None:
        if layer_name not in names:
            raise InputError(f"{role} file {path!r} has no layer {layer_name!r}; its layers are: {', '.join(names)}")
        layer = src.GetLayerByName(layer_name)
    elif len(names) > 1:
        raise InputError(f"{role} file {path!r} holds {len(names)} layers ({', '.join(names)}); pick one with "
                         f"{option} NAME")
    else:
        layer = src.GetLayerByIndex(0)
    srs = layer.GetSpatialRef()
    if srs is None:
        raise InputError(f"{role} layer {layer.GetName()!r} of {path!r} has no coordinate reference system; "
                         "assign one (QGIS: Layer Properties > Source, or ogr2ogr -a_srs EPSG:XXXX OUT IN)")
    declared = layer.GetGeomType()
    if declared not in (ogr.wkbUnknown, ogr.wkbGeometryCollection) and not _is_polygonal(declared):
        raise InputError(f"{role} layer {layer.GetName()!r} of {path!r} holds {ogr.GeometryTypeToName(declared)} "
                         "geometries; training labels need polygons (draw the changed areas as polygons, or "
                         "buffer lines/points first)")
    if where:
        try:
            layer.SetAttributeFilter(where)
        except RuntimeError as exc:
            raise InputError(f"--where {where!r} is not a valid filter for layer {layer.GetName()!r} "
                             f"({str(exc).strip()}); use OGR SQL, e.g. \"class = 'building'\"") from None
    srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    dst = align.srs_from_wkt(grid.wkt)
    transform = None if dst is None or srs.IsSame(dst) else osr.CoordinateTransformation(srs, dst)
    mem = ogr.GetDriverByName("Memory").CreateDataSource(f"{role}_on_grid")
    out = mem.CreateLayer(role, srs=dst, geom_type=ogr.wkbMultiPolygon)
    try:
        count, other = _copy_polygons(layer, out, transform)
    except RuntimeError as exc:
        what = f"with --where {where!r} " if where else ""
        raise InputError(f"{role} layer {layer.GetName()!r} of {path!r} cannot be read {what}({str(exc).strip()})"
                         + ("; --where is not a valid filter: use OGR SQL, e.g. \"class = 'building'\"" if where
                            else "")) from None
    if other:
        kinds = ", ".join(f"{n} {k}" for k, n in other.items())
        raise InputError(f"{role} layer {layer.GetName()!r} of {path!r} holds non-polygon geometries ({kinds}); "
                         "training labels need polygons only: remove or buffer them, or select polygons with --where")
    if count == 0:
        filt = f" matching --where {where!r}" if where else ""
        raise InputError(f"{role} layer {layer.GetName()!r} of {path!r} holds no polygon{filt}; draw the changed "
                         "areas first" + (" or change the filter" if where else ""))
    return PolygonLayer(path, layer.GetName(), srs.ExportToWkt(), count, mem, out)


def _copy_polygons(layer: ogr.Layer, out: ogr.Layer, transform: osr.CoordinateTransformation | None
                   ) -> tuple[int, dict[str, int]]:
    """Copy the polygons of ``layer`` into ``out`` (reprojected); returns (count, non-polygon counts by type)."""
    defn = out.GetLayerDefn()
    count = 0
    other: dict[str, int] = {}
    for feature in layer:
        geom = feature.GetGeometryRef()
        if geom is None or geom.IsEmpty():
            continue
        if not _is_polygonal(geom.GetGeometryType()):
            name = ogr.GeometryTypeToName(geom.GetGeometryType())
            other[name] = other.get(name, 0) + 1
            continue
        geom = ogr.ForceToMultiPolygon(geom.GetLinearGeometry() if geom.HasCurveGeometry() else geom.Clone())
        if transform is not None:
            geom.Transform(transform)
        f = ogr.Feature(defn)
        f.SetGeometry(geom)
        out.CreateFeature(f)
        count += 1
    return count, other


def rectangle(xmin: float, ymin: float, xmax: float, ymax: float) -> ogr.Geometry:
    """A rectangle polygon."""
    ring = ogr.Geometry(ogr.wkbLinearRing)
    for x, y in ((xmin, ymin), (xmax, ymin), (xmax, ymax), (xmin, ymax), (xmin, ymin)):
        ring.AddPoint_2D(x, y)
    poly = ogr.Geometry(ogr.wkbPolygon)
    poly.AddGeometry(ring)
    return poly


def rasterize(polygons: PolygonLayer, geotransform: tuple[float, ...], crs_wkt: str, width: int, height: int,
              all_touched: bool = False) -> np.ndarray:
    """Burn the polygons into a ``(height, width)`` uint8 grid: 1 inside, 0 outside."""
    ds = gdal.GetDriverByName("MEM").Create("", width, height, 1, gdal.GDT_Byte)
    ds.SetGeoTransform(geotransform)
    ds.SetProjection(crs_wkt)
    x0, dx, _, y0, _, dy = geotransform
    xs, ys = (x0, x0 + dx * width), (y0, y0 + dy * height)
    layer = polygons.layer
    layer.SetSpatialFilterRect(min(xs), min(ys), max(xs), max(ys))
    try:
        options = ["ALL_TOUCHED=TRUE"] if all_touched else []
        gdal.RasterizeLayer(ds, [1], layer, burn_values=[1], options=options)
    finally:
        layer.SetSpatialFilter(None)
    return ds.GetRasterBand(1).ReadAsArray()
