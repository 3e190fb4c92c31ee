"""Names that differ between QGIS 3.22 (Qt5, Debian 12) and QGIS 4 (Qt6), picked once at import.

QGIS 3.36-3.40 moved many class enums into ``Qgis`` (``QgsProcessingParameterNumber.Double`` →
``Qgis.ProcessingNumberParameterType.Double``) and QGIS 4's PyQt6 bindings drop the old,
unscoped spellings; QGIS 3.22 has only the old ones. Each constant below is the first name of
its list that the running QGIS has: the new ``Qgis`` spelling where it exists, else the old
spelling in its *scoped* form (``Class.Enum.Member``, which PyQt5 builds accept too).

This module is the one place in the plugin that names the old spellings (as fallbacks, in
strings); ``tests/plugin/test_qt6_spellings.py`` scans every other module for spellings that
break on Qt6. A name missing from every list raises at import, loudly, instead of guessing.
"""

from __future__ import annotations

from typing import Any

import qgis.core

try:  # Qt6: QAction lives in QtGui
    from qgis.PyQt.QtGui import QAction
except ImportError:  # Qt5: in QtWidgets
    from qgis.PyQt.QtWidgets import QAction


def first_available(*names: str, module: Any = qgis.core) -> Any:
    """The first of the dotted ``names`` (looked up in ``module``) that this QGIS has.

    Raises:
        ImportError: none of them exists (the plugin would otherwise fail later, obscurely).
    """
    for name in names:
        value: Any = module
        for part in name.split("."):
            value = getattr(value, part, None)
            if value is None:
                break
        if value is not None:
            return value
    raise ImportError(f"this QGIS has none of {', '.join(names)}")


# Processing (new names since QGIS 3.36)
NUMBER_INTEGER = first_available("Qgis.ProcessingNumberParameterType.Integer",
                                 "QgsProcessingParameterNumber.Type.Integer")
NUMBER_DOUBLE = first_available("Qgis.ProcessingNumberParameterType.Double",
                                "QgsProcessingParameterNumber.Type.Double")
ALGORITHM_CAN_CANCEL = first_available("Qgis.ProcessingAlgorithmFlag.CanCancel",
                                       "QgsProcessingAlgorithm.Flag.FlagCanCancel")
ALGORITHM_SUPPORTS_BATCH = first_available("Qgis.ProcessingAlgorithmFlag.SupportsBatch",
                                           "QgsProcessingAlgorithm.Flag.FlagSupportsBatch")
PARAMETER_ADVANCED = first_available("Qgis.ProcessingParameterFlag.Advanced",
                                     "QgsProcessingParameterDefinition.Flag.FlagAdvanced")
SOURCE_VECTOR_POLYGON = first_available("Qgis.ProcessingSourceType.VectorPolygon",
                                        "QgsProcessing.SourceType.TypeVectorPolygon")
SOURCE_VECTOR_ANY = first_available("Qgis.ProcessingSourceType.VectorAnyGeometry",
                                    "QgsProcessing.SourceType.TypeVectorAnyGeometry")
SOURCE_FILE = first_available("Qgis.ProcessingSourceType.File", "QgsProcessing.SourceType.TypeFile")

# layers and rasters
RASTER_LAYER_FILTER = first_available("Qgis.LayerFilter.RasterLayer",  # QGIS 3.34
                                      "QgsMapLayerProxyModel.Filter.RasterLayer")
POLYGON_LAYER_FILTER = first_available("Qgis.LayerFilter.PolygonLayer",
                                       "QgsMapLayerProxyModel.Filter.PolygonLayer")
GEOMETRY_POLYGON = first_available("Qgis.GeometryType.Polygon",  # QGIS 3.30
                                   "QgsWkbTypes.GeometryType.PolygonGeometry")
GEOMETRY_LINE = first_available("Qgis.GeometryType.Line", "QgsWkbTypes.GeometryType.LineGeometry")
GEOMETRY_POINT = first_available("Qgis.GeometryType.Point", "QgsWkbTypes.GeometryType.PointGeometry")
AREA_SQUARE_METERS = first_available("Qgis.AreaUnit.SquareMeters",  # QGIS 3.30
                                     "QgsUnitTypes.AreaUnit.AreaSquareMeters")
VECTOR_WRITE_OK = first_available("QgsVectorFileWriter.WriterError.NoError")
RASTER_SIZE_CAPABILITY = first_available("Qgis.RasterInterfaceCapability.Size",  # QGIS 3.38
                                         "QgsRasterDataProvider.Capability.Size")
RASTER_WRITE_OK = first_available("Qgis.RasterFileWriterResult.Success",  # QGIS 3.38
                                  "QgsRasterFileWriter.WriterError.NoError")
RASTER_WRITE_CANCELED = first_available("Qgis.RasterFileWriterResult.Canceled",
                                        "QgsRasterFileWriter.WriterError.WriteCanceled")
CRS_WKT_PREFERRED = first_available("Qgis.CrsWktVariant.Preferred",  # QGIS 3.36
                                    "QgsCoordinateReferenceSystem.WktVariant.WKT_PREFERRED")

__all__ = [
    "ALGORITHM_CAN_CANCEL", "ALGORITHM_SUPPORTS_BATCH", "CRS_WKT_PREFERRED", "NUMBER_DOUBLE", "NUMBER_INTEGER",
    "PARAMETER_ADVANCED", "QAction", "RASTER_LAYER_FILTER", "RASTER_SIZE_CAPABILITY", "RASTER_WRITE_CANCELED",
    "RASTER_WRITE_OK", "SOURCE_VECTOR_POLYGON", "first_available", "SOURCE_VECTOR_ANY", "SOURCE_FILE",
    "POLYGON_LAYER_FILTER", "GEOMETRY_POLYGON", "GEOMETRY_LINE", "GEOMETRY_POINT", "AREA_SQUARE_METERS",
    "VECTOR_WRITE_OK",
]
