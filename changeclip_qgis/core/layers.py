"""QGIS layers in and out of a run.

In: a layer becomes a local file path the backend can open. GDAL layers on local files are
passed as they are; any other raster (WMS/XYZ tiles, WCS, virtual rasters, …) is exported to a
temporary GeoTIFF of a chosen extent and pixel size, or refused with a message that says what
to do. CRS differences are left to the backend's alignment.

Out: the mask, the probability raster and the polygons are loaded with the styles in
``resources/styles`` into one layer-tree group per run, by one rule for the dock and Processing
(:func:`place_output`): group ``ChangeCLIP: <run>`` at the top of the layer tree; inside it, top to
bottom, ``change polygons``, ``change mask`` (both visible) and ``change probability`` (present
but hidden: it would cover the mask); each layer named ``<output> — <run>``. Loading happens on
the main thread only.
"""

from __future__ import annotations

import math
import os
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsCoordinateTransformContext,
    QgsCsException,
    QgsMapLayer,
    QgsProject,
    QgsProviderRegistry,
    QgsRasterBlockFeedback,
    QgsRasterDataProvider,
    QgsRasterFileWriter,
    QgsRasterLayer,
    QgsRasterPipe,
    QgsRasterProjector,
    QgsRectangle,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import Qt

from ..compat import RASTER_SIZE_CAPABILITY, RASTER_WRITE_CANCELED, RASTER_WRITE_OK
from . import protocol
from .errors import JobCancelledError, LayerNotSupported
from .log import log
from .paths import style_path

MAX_EXPORT_SIDE_PX = 20000
"""Largest width or height of an exported raster; bigger extents are refused."""

STYLE_FOR_OUTPUT = {"mask": "change_mask", "probability": "change_probability", "polygons": "change_polygons",
                    "polygons_matching": "change_polygons", "mask_matching": "change_mask"}


@contextmanager
def no_sidecars_beside_inputs() -> Iterator[None]:
    """While active, rasters that QGIS opens in this thread write no GDAL ``.aux.xml`` beside them.

    Loading a raster layer makes QGIS compute band statistics, which GDAL keeps in its PAM
    (Persistent Auxiliary Metadata) and writes to ``<raster>.aux.xml`` next to the file when the
    dataset closes: a file written into the user's input folder. Processing loads the BEFORE and
    AFTER layers from their paths (``qgis_process``, the toolbox with a file path): with GDAL's
    ``GDAL_PAM_ENABLED`` set to ``NO`` for this thread while they are opened, those datasets
    keep statistics in memory only. Layers already open in the project are not reopened, so
    they are unaffected (and were not opened by us).
    """
    previous = suspend_input_sidecars()
    try:
        yield
    finally:
        restore_input_sidecars(previous)


def suspend_input_sidecars() -> str | None:
    """Turn GDAL's PAM sidecars off for rasters opened in this thread; return the earlier setting.

    See :func:`no_sidecars_beside_inputs`; pair every call with :func:`restore_input_sidecars`.
    """
    from osgeo import gdal

    previous = gdal.GetThreadLocalConfigOption("GDAL_PAM_ENABLED", None)
    gdal.SetThreadLocalConfigOption("GDAL_PAM_ENABLED", "NO")
    return previous


def restore_input_sidecars(previous: str | None) -> None:
    """Undo :func:`suspend_input_sidecars` (``previous`` is what it returned)."""
    from osgeo import gdal

    gdal.SetThreadLocalConfigOption("GDAL_PAM_ENABLED", previous)

OUTPUT_ORDER = (("polygons_matching", "matching changes"), ("polygons", "change polygons"),
                ("mask_matching", "matching change mask"), ("mask", "change mask"),
                ("probability", "change probability"))
"""The outputs of a run, top to bottom in its layer-tree group, with the names they get."""

HIDDEN_OUTPUTS = ("probability",)

VECTOR_OUTPUTS = ("polygons", "polygons_matching")
"""Outputs that are vector layers (the matching ones only exist after ``--describe --keep-matching``)."""
"""Outputs loaded unchecked: the probability raster would hide the mask under it."""

RUN_PROPERTY = "changeclip/run"
"""Custom property of a run's group (and its layers): the run's key, so a batch's runs stay apart."""

KIND_PROPERTY = "changeclip/output"
"""Custom property of an output layer: its kind (``mask``, ``probability``, ``polygons``)."""


def local_raster_path(layer: QgsMapLayer) -> str | None:
    """The local file behind a GDAL raster layer, or None when it is not a plain local file."""
    if not isinstance(layer, QgsRasterLayer) or layer.providerType() != "gdal":
        return None
    parts = QgsProviderRegistry.instance().decodeUri("gdal", layer.source())
    path = parts.get("path") or ""
    if parts.get("layerName") or not path or not os.path.isfile(path):
        return None
    return path


def same_raster_problem(before: QgsMapLayer | None, after: QgsMapLayer | None) -> str | None:
    """The message the dock and Processing both show when Before and After are one raster, else None.

    One raster means the same layer, the same local file (also when loaded twice, as two layers,
    or through a symbolic link) or, for non-file layers, the same provider and data source.
    """
    if before is None or after is None:
        return None
    same = before.id() == after.id()
    if not same:
        paths = local_raster_path(before), local_raster_path(after)
        if paths[0] is not None and paths[1] is not None:
            same = os.path.realpath(paths[0]) == os.path.realpath(paths[1])
        elif paths[0] is None and paths[1] is None:
            same = (before.providerType(), before.source()) == (after.providerType(), after.source())
    if not same:
        return None
    return (f"Before and After are the same raster ('{before.name()}'): the result would be 'no change' "
            "everywhere; pick the raster of the other date")


@dataclass
class ExportRequest:
    """Everything needed to write a layer to GeoTIFF off the main thread.

    Attributes:
        name: the layer's name (for messages).
        provider: a clone of the layer's data provider (owned by this request).
        crs: the CRS of ``extent`` and of the written file.
        extent: the area to write, in ``crs``.
        width, height: raster size in pixels.
        transform_context: the project's transform context.
    """

    name: str
    provider: QgsRasterDataProvider
    crs: QgsCoordinateReferenceSystem
    extent: QgsRectangle
    width: int
    height: int
    transform_context: QgsCoordinateTransformContext


def prepare_input(layer: QgsMapLayer, extent: QgsRectangle | None = None,
                  extent_crs: QgsCoordinateReferenceSystem | None = None,
                  pixel_size: float | None = None,
                  transform_context: QgsCoordinateTransformContext | None = None,
                  target_crs: QgsCoordinateReferenceSystem | None = None) -> str | ExportRequest:
    """A local path for ``layer``, or an :class:`ExportRequest` for it (call on the main thread).

    Args:
        layer: the chosen raster layer.
        extent: the area to export for non-file layers (in ``extent_crs``); None = the layer's
            own extent when it is finite and not global.
        extent_crs: CRS of ``extent`` (default: the layer's).
        pixel_size: export pixel size in ``extent_crs`` units (in ``target_crs`` units when that
            is given); None = the layer's own resolution when it has one.
        transform_context: for reprojecting ``extent`` (default: the project's).
        target_crs: export in this CRS instead (output grid 'custom'): the extent is reprojected
            into it and widened to whole multiples of ``pixel_size``, the way the backend lays
            out a custom grid, so the export already lies on the outputs' pixel grid.

    Raises:
        LayerNotSupported: the layer is not a valid raster, or no sensible extent/size exists.
    """
    if layer is None or not isinstance(layer, QgsRasterLayer):
        raise LayerNotSupported("pick a raster layer (vector and mesh layers cannot be compared)")
    if not layer.isValid():
        raise LayerNotSupported(f"layer '{layer.name()}' is not valid (its data source cannot be read)")
    path = local_raster_path(layer)
    if path is not None:
        return path
    context = transform_context or QgsProject.instance().transformContext()
    crs = extent_crs if extent_crs is not None and extent_crs.isValid() else layer.crs()
    if extent is None or extent.isEmpty():
        provider = layer.dataProvider()
        if not (provider.capabilities() & RASTER_SIZE_CAPABILITY) or provider.xSize() <= 0:
            raise LayerNotSupported(
                f"layer '{layer.name()}' ({layer.providerType()}) is not a local file and has no fixed extent; "
                "choose an extent to export (the other raster's, or zoom the map to the area) or save it "
                "as a GeoTIFF first (Export → Save As…)")
        extent = layer.extent()
        crs = layer.crs()
    if target_crs is not None and target_crs.isValid():
        extent = _snapped(_reprojected(extent, crs, target_crs, context, layer.name()), pixel_size)
        crs = target_crs
    if pixel_size is None:
        provider = layer.dataProvider()
        if (provider.capabilities() & RASTER_SIZE_CAPABILITY) and provider.xSize() > 0 and crs == layer.crs():
            pixel_size = layer.rasterUnitsPerPixelX()
    if not pixel_size or pixel_size <= 0:
        raise LayerNotSupported(f"layer '{layer.name()}' has no native resolution; choose a pixel size to "
                                "export it at (the dock uses the other raster's or the map's)")
    width = int(round(extent.width() / pixel_size))
    height = int(round(extent.height() / pixel_size))
    if width < 1 or height < 1:
        raise LayerNotSupported(f"the export extent for '{layer.name()}' is empty; choose a larger extent")
    if max(width, height) > MAX_EXPORT_SIDE_PX:
        raise LayerNotSupported(
            f"exporting '{layer.name()}' at {pixel_size:g} units/pixel would make a {width}x{height} raster "
            f"(limit {MAX_EXPORT_SIDE_PX} px per side); zoom in / choose a smaller extent or save it as a "
            "GeoTIFF yourself")
    provider = layer.dataProvider().clone()
    return ExportRequest(name=layer.name(), provider=provider, crs=crs, extent=QgsRectangle(extent),
                         width=width, height=height, transform_context=context)


def _reprojected(extent: QgsRectangle, source: QgsCoordinateReferenceSystem,
                 target: QgsCoordinateReferenceSystem, context: QgsCoordinateTransformContext,
                 name: str) -> QgsRectangle:
    """``extent`` (in ``source``) as a bounding box in ``target``."""
    if source == target:
        return QgsRectangle(extent)
    try:
        box = QgsCoordinateTransform(source, target, context).transformBoundingBox(extent)
    except QgsCsException as exc:
        raise LayerNotSupported(f"the export extent for '{name}' cannot be reprojected to "
                                f"{target.authid() or target.description()} ({exc}); choose a Target CRS "
                                "that covers the area") from None
    if box.isEmpty() or not all(map(math.isfinite, (box.xMinimum(), box.yMinimum(), box.xMaximum(),
                                                    box.yMaximum()))):
        raise LayerNotSupported(f"the export extent for '{name}' has no area in "
                                f"{target.authid() or target.description()}; choose a Target CRS that covers it")
    return box


def _snapped(extent: QgsRectangle, pixel_size: float | None) -> QgsRectangle:
    """``extent`` widened to whole multiples of ``pixel_size`` (as the backend's custom grid is)."""
    if not pixel_size or pixel_size <= 0:
        return extent
    return QgsRectangle(math.floor(extent.xMinimum() / pixel_size) * pixel_size,
                        math.floor(extent.yMinimum() / pixel_size) * pixel_size,
                        math.ceil(extent.xMaximum() / pixel_size) * pixel_size,
                        math.ceil(extent.yMaximum() / pixel_size) * pixel_size)


def run_export(request: ExportRequest, out_dir: str | None = None, feedback: Any = None) -> str:
    """Write ``request`` to a temporary GeoTIFF and return its path (safe off the main thread).

    Args:
        request: from :func:`prepare_input`.
        out_dir: folder for the file (default: the system's temporary folder).
        feedback: a QgsFeedback whose cancellation stops the export (optional).

    Raises:
        LayerNotSupported: the provider could not deliver the data (network error, …).
    """
    out_dir = out_dir or tempfile.gettempdir()
    final = os.path.join(out_dir, f"changeclip_export_{uuid.uuid4().hex[:12]}.tif")
    partial = final + ".part.tif"
    pipe = QgsRasterPipe()
    if not pipe.set(request.provider):
        raise LayerNotSupported(f"cannot read layer '{request.name}' for export")
    if request.provider.crs() != request.crs:  # reproject on the fly into the export CRS
        projector = QgsRasterProjector()
        projector.setCrs(request.provider.crs(), request.crs, request.transform_context)
        pipe.set(projector)
    writer = QgsRasterFileWriter(partial)
    writer.setOutputFormat("GTiff")
    writer.setCreateOptions(["COMPRESS=DEFLATE", "TILED=YES"])
    block_feedback = QgsRasterBlockFeedback()  # the writer wants this kind; follow the caller's cancel
    if feedback is not None:
        if feedback.isCanceled():
            block_feedback.cancel()
        # direct: the cancel comes from the main thread, this thread has no event loop
        feedback.canceled.connect(block_feedback.cancel, Qt.ConnectionType.DirectConnection)
    error = writer.writeRaster(pipe, request.width, request.height, request.extent, request.crs,
                               request.transform_context, block_feedback)
    if error == RASTER_WRITE_CANCELED:
        _remove(partial)
        raise JobCancelledError(f"the export of layer '{request.name}' was cancelled")
    if error != RASTER_WRITE_OK or not os.path.isfile(partial):
        _remove(partial)
        raise LayerNotSupported(f"exporting layer '{request.name}' to GeoTIFF failed (writer error {error}); "
                                "check that its source is reachable, or save it as a GeoTIFF first")
    os.replace(partial, final)
    log(f"exported '{request.name}' to {final} ({request.width}x{request.height} px)")
    return final


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


# --- outputs -------------------------------------------------------------------------


def apply_style(layer: QgsMapLayer, kind: str) -> bool:
    """Apply the bundled QML style for output ``kind`` (mask / probability / polygons)."""
    qml = style_path(STYLE_FOR_OUTPUT[kind])
    if not qml.is_file():
        log(f"style {qml} is missing", "warning")
        return False
    message, ok = layer.loadNamedStyle(str(qml))
    if not ok:
        log(f"could not apply {qml.name} to {layer.name()}: {message}", "warning")
        return False
    layer.triggerRepaint()
    return True


def write_sidecar_style(path: str, kind: str) -> str | None:
    """Write the bundled QML style next to an output file (``<name>.qml``).

    QGIS applies a same-named ``.qml`` whenever the file is opened later (drag and drop,
    Browser, another project), so outputs written by Processing or ``qgis_process`` open
    styled too. Written under a temporary name, then renamed.

    Returns:
        The sidecar's path, or None when the bundled style is missing.
    """
    qml = style_path(STYLE_FOR_OUTPUT[kind])
    if not qml.is_file():
        log(f"style {qml} is missing", "warning")
        return None
    target = os.path.splitext(path)[0] + ".qml"
    part = f"{target}.{uuid.uuid4().hex[:8]}.part"
    with open(qml, "rb") as src, open(part, "wb") as dst:
        dst.write(src.read())
    os.replace(part, target)
    return target


def output_layer_name(kind: str, run_name: str) -> str:
    """The name an output layer gets: ``"change mask — 2015 → 2020 [IR-MAD]"``."""
    return f"{dict(OUTPUT_ORDER)[kind]} — {run_name}"


def place_output(layer: QgsMapLayer, kind: str, run_name: str, run_key: str,
                 project: QgsProject | None = None, summary: dict[str, Any] | None = None) -> None:
    """Style, name and place one output layer of a run by the loading rule (main thread).

    The layer must already be in ``project`` (anywhere in the layer tree, or not in it at all).
    The run's group (found by ``run_key``, else created at the top of the tree) gets the layer at
    its place in :data:`OUTPUT_ORDER`, whatever order the outputs arrive in; the probability
    raster is left unchecked.

    Args:
        layer: the output layer.
        kind: ``mask``, ``probability`` or ``polygons``.
        run_name: the run's human name, e.g. ``"naip_2015 → naip_2020 [IR-MAD]"``.
        run_key: identifies the run (several runs may share a name, e.g. in a batch).
        project: the project (default: the current one).
        summary: the run's summary: polygons of a run with ``describe`` are styled by what CLIP said
            (:func:`describe.style_described_polygons`).
    """
    project = project or QgsProject.instance()
    root = project.layerTreeRoot()
    apply_style(layer, kind)
    if kind in VECTOR_OUTPUTS and summary and summary.get("describe"):
        from .describe import style_described_polygons

        style_described_polygons(layer, summary)
    layer.setName(output_layer_name(kind, run_name))
    layer.setCustomProperty(KIND_PROPERTY, kind)
    layer.setCustomProperty(RUN_PROPERTY, run_key)
    group = next((g for g in root.findGroups() if g.customProperty(RUN_PROPERTY) == run_key), None)
    if group is None:
        group = root.insertGroup(0, f"ChangeCLIP: {run_name}")
        group.setCustomProperty(RUN_PROPERTY, run_key)
    rank = [k for k, _ in OUTPUT_ORDER]
    siblings = [n for n in group.findLayers() if n.layer() is not None and n.layer().id() != layer.id()]
    index = sum(1 for n in siblings if rank.index(n.layer().customProperty(KIND_PROPERTY) or "probability")
                < rank.index(kind))
    old = root.findLayer(layer.id())
    node = group.insertLayer(index, layer)  # before the old node goes, so the layer stays in the project
    if old is not None and old.parent() is not None:
        old.parent().removeChildNode(old)
    node.setItemVisibilityChecked(kind not in HIDDEN_OUTPUTS)


def load_outputs(summary: dict[str, Any], run_name: str, project: QgsProject | None = None,
                 run_key: str | None = None) -> dict[str, QgsMapLayer]:
    """Load a run's outputs, styled, into a new group at the top of the layer tree (main thread).

    Args:
        summary: the run's summary (its ``outputs`` dict names the files).
        run_name: group name, e.g. ``"2015 → 2020 [building]"``.
        project: the project (default: the current one).
        run_key: identifies the run's group (default: a new one).

    Returns:
        The loaded layers by output kind (``mask``, ``probability``, ``polygons``).
    """
    project = project or QgsProject.instance()
    outputs = summary.get("outputs") or {}
    run_key = run_key or uuid.uuid4().hex
    loaded: dict[str, QgsMapLayer] = {}
    for kind, _label in OUTPUT_ORDER:
        path = outputs.get(kind)
        if not path or not os.path.exists(path):
            continue
        if kind in VECTOR_OUTPUTS:
            layer: QgsMapLayer = QgsVectorLayer(path, output_layer_name(kind, run_name), "ogr")
        else:
            layer = QgsRasterLayer(path, output_layer_name(kind, run_name), "gdal")
        if not layer.isValid():
            log(f"output {path} could not be loaded", "warning")
            continue
        project.addMapLayer(layer, False)
        place_output(layer, kind, run_name, run_key, project, summary)
        loaded[kind] = layer
    return loaded


def output_paths(params: protocol.DetectParams) -> dict[str, str | None]:
    """Where a job's outputs will be (for messages before the job ran)."""
    return params.output_paths()
