"""Checks and figures of the change polygons (and AOI) a training dataset is made from, in QGIS.

Everything here runs before any job is sent to the backend, so that the common mistakes get a
clear message at once: a layer that is not polygons, a layer without a CRS, no polygon (or no
selected one), polygons that all lie outside the overlap of the two rasters, an AOI that covers
no change polygon. :func:`polygon_figures` gives the count and area shown on the dock's Train
page. Works on vector layers and on Processing feature sources alike (both have
``getFeatures``, ``wkbType`` and a CRS).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsCoordinateTransformContext,
    QgsCsException,
    QgsDistanceArea,
    QgsFeatureRequest,
    QgsGeometry,
    QgsRectangle,
    QgsWkbTypes,
)

from ..compat import AREA_SQUARE_METERS, GEOMETRY_LINE, GEOMETRY_POINT, GEOMETRY_POLYGON
from .errors import ChangeClipPluginError


class TrainingInputError(ChangeClipPluginError):
    """The polygons (or the AOI) cannot make a training dataset; the message says why and what to do."""


@dataclass
class PolygonFigures:
    """How many polygons and how much area a layer labels.

    Attributes:
        count: polygons (features with a non-empty geometry).
        area_m2: their total area in square metres (ellipsoidal), ``None`` without a CRS.
    """

    count: int
    area_m2: float | None

    def text(self) -> str:
        """``"3 polygons, 1,250 m² labelled"``."""
        noun = "polygon" if self.count == 1 else "polygons"
        if self.area_m2 is None:
            return f"{self.count} {noun} (area unknown: the layer has no CRS)"
        area = f"{self.area_m2 / 1e6:,.2f} km²" if self.area_m2 >= 1e6 else f"{self.area_m2:,.0f} m²"
        return f"{self.count} {noun}, {area} labelled"


def _crs(source: Any) -> QgsCoordinateReferenceSystem:
    crs = source.sourceCrs() if hasattr(source, "sourceCrs") else source.crs()
    return crs


def _geometries(source: Any, selected_only: bool = False) -> list[QgsGeometry]:
    if selected_only and hasattr(source, "getSelectedFeatures"):
        features = source.getSelectedFeatures()
    else:
        features = source.getFeatures(QgsFeatureRequest().setNoAttributes())
    return [QgsGeometry(f.geometry()) for f in features if f.hasGeometry() and not f.geometry().isEmpty()]


def polygon_figures(layer: Any, transform_context: QgsCoordinateTransformContext,
                    ellipsoid: str = "EPSG:7030", selected_only: bool = False) -> PolygonFigures:
    """Count and area (m², on ``ellipsoid``) of the polygons of ``layer``."""
    geometries = _geometries(layer, selected_only)
    crs = _crs(layer)
    if not crs.isValid():
        return PolygonFigures(len(geometries), None)
    measure = QgsDistanceArea()
    measure.setSourceCrs(crs, transform_context)
    measure.setEllipsoid(ellipsoid)
    total = 0.0
    for geometry in geometries:
        area = measure.measureArea(geometry)
        total += measure.convertAreaMeasurement(area, AREA_SQUARE_METERS)
    return PolygonFigures(len(geometries), total)


def check_polygon_layer(source: Any, role: str, selected_only: bool = False) -> list[QgsGeometry]:
    """The polygons of a CHANGES or AOI layer, refusing what cannot be used.

    Args:
        source: a vector layer or a Processing feature source.
        role: the parameter's name for the messages (``CHANGES``, ``AOI``).
        selected_only: only the selected features count (layers only; a feature source has
            already applied Processing's "selected features only").

    Raises:
        TrainingInputError: not polygons, no CRS, or no polygon at all.
    """
    if source is None:
        raise TrainingInputError(f"{role}: no layer given; choose a polygon layer")
    geometry_type = QgsWkbTypes.geometryType(source.wkbType())
    if geometry_type != GEOMETRY_POLYGON:
        kind = {GEOMETRY_POINT: "points", GEOMETRY_LINE: "lines"}.get(geometry_type,
                                                                                              "not geometries")
        raise TrainingInputError(f"{role}: the layer holds {kind}, not polygons; draw the changes as polygons "
                                 "(a polygon layer, e.g. one made with the Train page's 'New layer' button)")
    if not _crs(source).isValid():
        raise TrainingInputError(f"{role}: the layer has no CRS, so it cannot be placed on the rasters; set its "
                                 "CRS (Layer Properties > Source) to the one it was drawn in")
    geometries = _geometries(source, selected_only)
    if not geometries:
        which = "no selected polygon" if selected_only else "no polygon"
        raise TrainingInputError(f"{role}: the layer has {which}; draw at least one polygon around a change "
                                 "(or clear 'selected features only')")
    return geometries


def raster_overlap(before: Any, after: Any, crs: QgsCoordinateReferenceSystem,
                   transform_context: QgsCoordinateTransformContext) -> QgsRectangle:
    """The overlap of two raster layers' extents, in ``crs``.

    Raises:
        TrainingInputError: a raster without CRS, or rasters that do not overlap.
    """
    extents = []
    for role, layer in (("BEFORE", before), ("AFTER", after)):
        if not layer.crs().isValid():
            raise TrainingInputError(f"{role}: the raster '{layer.name()}' has no CRS; training tiles are cut on "
                                     "georeferenced rasters only (assign its CRS with Warp or Layer Properties)")
        try:
            extents.append(QgsCoordinateTransform(layer.crs(), crs, transform_context)
                           .transformBoundingBox(layer.extent()))
        except QgsCsException as exc:
            raise TrainingInputError(f"{role}: its extent cannot be transformed to the polygons' CRS "
                                     f"({exc})") from None
    overlap = extents[0].intersect(extents[1])
    if overlap.isEmpty():
        raise TrainingInputError("BEFORE and AFTER do not overlap; choose two rasters of the same area")
    return overlap


def check_training_polygons(changes: Any, aoi: Any | None, before: Any, after: Any,
                            transform_context: QgsCoordinateTransformContext,
                            selected_only: bool = False) -> list[str]:
    """Every check of the polygons against each other and the rasters; returns warnings.

    Raises:
        TrainingInputError: see :func:`check_polygon_layer`; every change polygon outside the
            rasters' overlap; an AOI that covers none of the change polygons.
    """
    polygons = check_polygon_layer(changes, "CHANGES", selected_only)
    crs = _crs(changes)
    overlap = QgsGeometry.fromRect(raster_overlap(before, after, crs, transform_context))
    inside = [g for g in polygons if g.intersects(overlap)]
    if not inside:
        box = overlap.boundingBox()
        raise TrainingInputError(
            f"CHANGES: none of the {len(polygons)} polygon(s) lies in the area both rasters cover "
            f"({box.xMinimum():.1f}, {box.yMinimum():.1f} - {box.xMaximum():.1f}, {box.yMaximum():.1f} in "
            f"{crs.authid() or 'the layer CRS'}); draw the changes where BEFORE and AFTER overlap")
    warnings = []
    if len(inside) < len(polygons):
        warnings.append(f"CHANGES: {len(polygons) - len(inside)} of {len(polygons)} polygon(s) lie outside the "
                        "area both rasters cover and are not used")
    if aoi is not None:
        areas = check_polygon_layer(aoi, "AOI")
        to_changes = QgsCoordinateTransform(_crs(aoi), crs, transform_context)
        union = QgsGeometry.unaryUnion(areas)
        try:
            union.transform(to_changes)
        except QgsCsException as exc:
            raise TrainingInputError(f"AOI: cannot be transformed to the change polygons' CRS ({exc})") from None
        if not any(g.intersects(union) for g in inside):
            raise TrainingInputError("AOI: it covers none of the change polygons; the AOI marks where the labels "
                                     "are complete, so it must contain the changes you drew (or leave AOI empty)")
        if not union.intersects(overlap):
            raise TrainingInputError("AOI: it lies outside the area both rasters cover")
    return warnings
