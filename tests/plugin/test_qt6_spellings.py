"""The plugin claims Qt6 (QGIS 4) support in metadata.txt only as far as this scan proves it: no
spelling known to break on Qt6 builds of QGIS, outside ``changeclip_qgis/compat.py`` (the one
module that names the old spellings, as fallbacks chosen only where the new names are missing).

Two checks, both over every plugin module:

1. A list of patterns known to break on Qt6/QGIS 4, each with the reason.
2. Every ``Class.Member`` where ``Class`` is imported from ``qgis.*`` and ``Member`` is an enum
   member on this QGIS 3.22: unscoped access. PyQt6 enums are Python enums, so their members
   exist only on the enum type (``Qt.AlignmentFlag.AlignLeft``, never ``Qt.AlignLeft``); the scoped
   spelling works on PyQt5 builds too.

What it cannot prove: that the plugin runs on a QGIS 4 build (none can be installed here).
"""

from __future__ import annotations

import ast
import configparser
import importlib
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.qgis

REPO_ROOT = Path(__file__).resolve().parents[2]
PLUGIN = REPO_ROOT / "changeclip_qgis"
COMPAT = PLUGIN / "compat.py"

BREAKS_ON_QT6: list[tuple[str, str]] = [
    (r"\bQgsProcessingParameterNumber\.(Type\b|Integer\b|Double\b)",
     "number types moved to Qgis.ProcessingNumberParameterType (3.36); QGIS 4 drops the old names"),
    (r"\bQgsProcessingAlgorithm\.(Flag|Flags\b)",
     "algorithm flags moved to Qgis.ProcessingAlgorithmFlag (3.36); QGIS 4 drops FlagCanCancel & co."),
    (r"\bQgsProcessingParameterDefinition\.Flag",
     "parameter flags moved to Qgis.ProcessingParameterFlag (3.36); QGIS 4 drops FlagAdvanced & co."),
    (r"\bQgsProcessing\.(Type\w*|SourceType)\b",
     "source types moved to Qgis.ProcessingSourceType (3.36); QGIS 4 drops TypeVectorPolygon & co."),
    (r"\bQgsMapLayerProxyModel\.(Filter\b|\w*Layer\b|All\b|\w+Geometry\b)",
     "layer filters moved to Qgis.LayerFilter (3.34); QGIS 4 drops QgsMapLayerProxyModel.RasterLayer & co."),
    (r"\bQgsRasterDataProvider\.(Size|Capability|Identify\w*|Create|Remove|BuildPyramids|Prefetch)\b",
     "raster capabilities moved to Qgis.RasterInterfaceCapability (3.38)"),
    (r"\bQgsRasterFileWriter\.(NoError|WriteCanceled|WriterError|SourceProviderError|WriteError)\b",
     "writer results moved to Qgis.RasterFileWriterResult (3.32); QGIS 4 drops the old names"),
    (r"\bQgsCoordinateReferenceSystem\.(WKT_\w+|WktVariant)\b",
     "WKT variants moved to Qgis.CrsWktVariant (3.36); QGIS 4 drops WKT_PREFERRED & co."),
    (r"\bQgis\.(Info|Warning|Critical|Success|NoLevel)\b",
     "unscoped Qgis.MessageLevel members: PyQt6 enums are scoped (Qgis.MessageLevel.Info)"),
    (r"\bexec_\(", "PyQt6 removed exec_(); use exec()"),
    (r"\bQRegExp\b", "Qt6 removed QRegExp; use QRegularExpression"),
    (r"\bQVariant\.\w+", "QVariant.Type values are gone in Qt6 (QMetaType.Type)"),
    (r"from qgis\.PyQt\.QtWidgets import [^\n]*\bQAction\b",
     "Qt6 moved QAction to QtGui; import it from changeclip_qgis.compat"),
    (r"\bQt\.[A-Z]\w*\b(?!\s*\.)(?!\s*\()", "unscoped Qt enum member (e.g. Qt.AlignLeft): PyQt6 needs Qt.AlignmentFlag.AlignLeft"),
]
"""(regular expression, why it breaks on Qt6 / QGIS 4). A line may opt out only with a reason in
a ``# qt6-ok: …`` comment (none does today)."""


def _modules() -> list[Path]:
    return sorted(p for p in PLUGIN.rglob("*.py") if p != COMPAT and "backend" not in p.relative_to(PLUGIN).parts)


def _shown(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def pattern_hits(paths: list[Path]) -> list[str]:
    """``file:line: text  <- why`` for every line matching a :data:`BREAKS_ON_QT6` pattern."""
    hits = []
    for path in paths:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#", 1)[0]
            if "# qt6-ok:" in line:
                continue
            for pattern, why in BREAKS_ON_QT6:
                if re.search(pattern, code):
                    hits.append(f"{_shown(path)}:{number}: {line.strip()}  <- {why}")
    return hits


def _qgis_names(tree: ast.AST) -> dict[str, object]:
    """Names the module imports from qgis.* (and qgis.PyQt.*), resolved on this QGIS."""
    names: dict[str, object] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("qgis"):
            module = importlib.import_module(node.module)
            for alias in node.names:
                value = getattr(module, alias.name, None)
                if value is not None:
                    names[alias.asname or alias.name] = value
    return names


def _is_enum_member(value: object) -> bool:
    kind = type(value)
    return isinstance(value, int) and not isinstance(value, bool) and type(kind).__name__ in ("enumtype", "EnumType",
                                                                                               "EnumMeta")


def unscoped_enum_hits(paths: list[Path]) -> list[str]:
    """``file:line: Class.Member`` for every enum member read straight off a QGIS/Qt class."""
    hits = []
    for path in paths:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = _qgis_names(tree)
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)):
                continue
            owner = names.get(node.value.id)
            if owner is None or not isinstance(owner, type):
                continue
            value = getattr(owner, node.attr, None)
            if _is_enum_member(value):
                hits.append(f"{_shown(path)}:{node.lineno}: {node.value.id}.{node.attr} "
                            f"(scoped: {node.value.id}.{type(value).__name__}.{node.attr}, or a Qgis.* name via compat)")
    return hits


def test_the_scan_finds_what_breaks(tmp_path: Path) -> None:
    """The scan is not blind: it flags the spellings this plugin used before it was fixed."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from qgis.core import Qgis, QgsProcessingAlgorithm, QgsProcessingParameterNumber\n"
        "from qgis.PyQt.QtCore import Qt\n"
        "from qgis.PyQt.QtWidgets import QAction, QMessageBox\n"
        "a = QgsProcessingParameterNumber.Double\n"
        "b = QgsProcessingAlgorithm.FlagCanCancel\n"
        "c = Qt.AlignLeft\n"
        "d = QMessageBox.Yes\n"
        "e = Qgis.Info\n"
        "ok = (Qt.AlignmentFlag.AlignLeft, QMessageBox.StandardButton.Yes, Qgis.MessageLevel.Info)\n",
        encoding="utf-8")
    patterns = pattern_hits([sample])
    for expected in (":3:", ":4:", ":5:", ":6:", ":8:"):
        assert any(expected in hit for hit in patterns), (expected, patterns)
    assert not [hit for hit in patterns if ":9:" in hit], "scoped spellings are fine"
    unscoped = {hit.split(": ", 1)[1].split(" ")[0] for hit in unscoped_enum_hits([sample])}
    assert unscoped == {"QgsProcessingParameterNumber.Double", "QgsProcessingAlgorithm.FlagCanCancel",
                        "Qt.AlignLeft", "QMessageBox.Yes", "Qgis.Info"}


def test_plugin_has_no_spelling_that_breaks_on_qt6() -> None:
    hits = pattern_hits(_modules()) + unscoped_enum_hits(_modules())
    assert not hits, "spellings that break on Qt6 (QGIS 4):\n" + "\n".join(hits)


def test_compat_picks_names_this_qgis_has() -> None:
    from qgis.core import QgsProcessingAlgorithm, QgsProcessingParameterNumber

    from changeclip_qgis import compat

    assert compat.NUMBER_DOUBLE == QgsProcessingParameterNumber.Type.Double
    assert compat.NUMBER_INTEGER == QgsProcessingParameterNumber.Type.Integer
    assert compat.ALGORITHM_CAN_CANCEL == QgsProcessingAlgorithm.Flag.FlagCanCancel
    assert compat.first_available("Qgis.NoSuchEnum.Member", "Qgis.MessageLevel.Info") == 0
    with pytest.raises(ImportError, match="none of Qgis.NoSuchEnum.Member"):
        compat.first_available("Qgis.NoSuchEnum.Member")


def test_metadata_claims_only_what_is_shown() -> None:
    """supportsQt6 only while the scan is clean; the QGIS range is 3.22 (tested here) to 4.x."""
    parser = configparser.ConfigParser()
    parser.read(REPO_ROOT / "metadata.txt", encoding="utf-8")
    meta = parser["general"]
    clean = not (pattern_hits(_modules()) + unscoped_enum_hits(_modules()))
    assert (meta.get("supportsQt6", "no").strip().lower() in ("yes", "true")) == clean
    assert meta["qgisMinimumVersion"] == "3.22"  # the oldest QGIS the tests run on (Debian 12's 3.22)
    assert meta["qgisMaximumVersion"] == "4.99"  # QGIS 4 only offers plugins whose maximum is 4.x
