"""Describing changes in words, on the plugin side: what the prompt and query fields do, the
describe weights, the styling of described polygons and the "N of M changes match" line.

The backend does the describing (``detect --describe``); here nothing imports torch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from qgis.core import (
    QgsCategorizedSymbolRenderer,
    QgsFillSymbol,
    QgsMapLayer,
    QgsRendererCategory,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import Qt

from .params import TAGGER_SUBFOLDER, WEIGHT_SUFFIXES

PALETTE = ("#e41a1c", "#377eb8", "#4daf4a", "#984ea3", "#ff7f00", "#ffff33", "#a65628", "#f781bf",
           "#66c2a5", "#fc8d62", "#8da0cb", "#e78ac3", "#a6d854", "#ffd92f", "#e5c494", "#b3b3b3")
"""Colours of the after_class categories (ColorBrewer Set1 + Set2), cycled."""

PROMPT_HELP = {
    "auto": ("ChangeCLIP prompt (auto): CLIP tags of each tile plus your words are fed to the network. They "
             "nudge its features; they do not choose what kind of change you get. To find a kind of change, "
             "tick 'Describe changes' and type it in 'Find'."),
    "words": ("ChangeCLIP prompt (words): only your words are fed to the network. They nudge its features; they "
              "do not choose what kind of change you get: use 'Find' (with 'Describe changes') for that."),
    "none": "ChangeCLIP prompt (none): constant prompts; the network runs without words.",
    "irmad": ("IR-MAD uses no prompt. To say what each change is, or keep only the changes you look for, tick "
              "'Describe changes' and type them in 'Find'."),
}
"""What the dock's prompt field does, per engine/prompt mode (its tooltip and placeholder)."""

QUERY_HELP = ("Find: words ('building') or a transition ('farmland to building'). CLIP scores every change "
              "polygon against it (query_score, 0-1); polygons at or above the threshold match. Needs "
              "'Describe changes'.")


def prompt_help(engine: str, prompt_mode: str) -> str:
    """The prompt field's help for an engine and prompt mode."""
    return PROMPT_HELP["irmad"] if engine != "changeclip" else PROMPT_HELP.get(prompt_mode, PROMPT_HELP["auto"])


def resolve_describe_weights(explicit: str, weights_dir: str) -> str | None:
    """The CLIP file for describing: the explicit one, else the tagger's file (``<weights folder>/tagger/``).

    Returns None when neither exists: the backend then downloads OpenAI CLIP ViT-B/16 where it
    can, and otherwise stops with a message that names the options.
    """
    if explicit and explicit.strip():
        return os.path.abspath(os.path.expanduser(explicit.strip()))
    if not weights_dir:
        return None
    folder = Path(weights_dir).expanduser() / TAGGER_SUBFOLDER
    if not folder.is_dir():
        return None
    found = sorted(p for p in folder.glob("*") if p.suffix in (*WEIGHT_SUFFIXES, ".bin"))
    return str(found[0].resolve()) if len(found) == 1 else None


def matching_line(summary: dict[str, Any]) -> str | None:
    """``"N of M changes match 'q' (X m²)"`` for a run with a query, else None."""
    info = summary.get("describe") or {}
    query = info.get("query")
    if not query:
        return None
    area = query.get("matching_area_m2")
    where = f" ({area:,.0f} m²)" if area is not None else ""
    return f"{query.get('matching', 0)} of {info.get('polygons', 0)} changes match '{query.get('text', '')}'{where}"


def _fill(colour: str, opacity: float, outline: str, width: float) -> QgsFillSymbol:
    symbol = QgsFillSymbol.createSimple({"color": colour, "outline_color": outline, "outline_width": str(width),
                                         "outline_width_unit": "MM"})
    symbol.setOpacity(opacity)
    return symbol


def style_described_polygons(layer: QgsMapLayer, summary: dict[str, Any]) -> bool:
    """Style a described polygon layer: by ``matches_query`` when the run had a query, else by
    ``after_class``; the attribute table sorts by ``query_score`` (best first) or ``after_p``.

    Returns:
        False when the layer has no describe attributes (nothing changed).
    """
    if not isinstance(layer, QgsVectorLayer) or layer.fields().indexOf("after_class") < 0:
        return False
    query = ((summary.get("describe") or {}).get("query") or {}).get("text")
    if query and layer.fields().indexOf("matches_query") >= 0:
        categories = [
            QgsRendererCategory(1, _fill("#ff7f00", 0.55, "#b35900", 0.5), f"matches '{query}'"),
            QgsRendererCategory(0, _fill("#ffffff", 0.0, "#9e9e9e", 0.2), "other changes"),
        ]
        renderer = QgsCategorizedSymbolRenderer("matches_query", categories)
        sort = '"query_score"'
    else:
        idx = layer.fields().indexOf("after_class")
        values = sorted(str(v) for v in layer.uniqueValues(idx) if v not in (None, ""))
        categories = [QgsRendererCategory(v, _fill(PALETTE[i % len(PALETTE)], 0.45, "#333333", 0.2), v)
                      for i, v in enumerate(values)]
        renderer = QgsCategorizedSymbolRenderer("after_class", categories)
        sort = '"after_p"'
    layer.setRenderer(renderer)
    config = layer.attributeTableConfig()
    config.setSortExpression(sort)
    config.setSortOrder(Qt.SortOrder.DescendingOrder)
    layer.setAttributeTableConfig(config)
    layer.triggerRepaint()
    return True


def describe_outputs(summary: dict[str, Any]) -> dict[str, str]:
    """The matching outputs of a run with ``keep_matching`` (kind -> path), for loading."""
    outputs = summary.get("outputs") or {}
    return {k: outputs[k] for k in ("polygons_matching", "mask_matching") if outputs.get(k)}

