"""Human and JSON summaries of a dataset folder (``changeclip dataset info`` and the makers' last words)."""

from __future__ import annotations

from typing import Any

from changeclip.datasets.manifest import IGNORE, Manifest
from changeclip.raster.align import srs_from_wkt


def crs_name(wkt: str | None) -> str:
    """``EPSG:XXXX``, else the CRS's name, or ``no CRS``."""
    srs = srs_from_wkt(wkt or "")
    if srs is None:
        return "no CRS"
    if srs.GetAuthorityName(None) == "EPSG":
        return f"EPSG:{srs.GetAuthorityCode(None)}"
    return srs.GetName() or "a custom CRS"


def crs_label(wkt: str | None) -> str:
    """``EPSG:XXXX (name)``, the CRS's name, or ``none``."""
    srs = srs_from_wkt(wkt or "")
    if srs is None:
        return "none (tiles are not georeferenced)"
    name = crs_name(wkt)
    return f"{name} ({srs.GetName()})" if name.startswith("EPSG:") else name


def split_rows(manifest: Manifest) -> list[dict[str, Any]]:
    """Per split: tiles, pixel counts per class, change share among labelled pixels."""
    rows = []
    for name, split in manifest.splits.items():
        px = split.pixels
        rows.append({"split": name, "tiles": len(split.tiles), "no_change_px": px.get("0", 0),
                     "change_px": px.get("1", 0), "ignored_px": px.get(str(IGNORE), 0),
                     "change_share": split.changed_share})
    return rows


def format_histogram(manifest: Manifest) -> str:
    """The per-split class histogram as a small table."""
    lines = [f"{'split':<6} {'tiles':>7} {'no change (0)':>15} {'change (1)':>13} {'ignored (255)':>14} "
             f"{'change share':>12}"]
    for r in split_rows(manifest):
        share = "-" if r["change_share"] is None else f"{100 * r['change_share']:.2f} %"
        lines.append(f"{r['split']:<6} {r['tiles']:>7} {r['no_change_px']:>15,} {r['change_px']:>13,} "
                     f"{r['ignored_px']:>14,} {share:>12}")
    return "\n".join(lines)


def format_summary(manifest: Manifest, sources: bool = False) -> str:
    """A few lines: kind, tiles, CRS, GSD, scaling, the histogram table and (optionally) the sources."""
    gsd = f"{manifest.gsd_m:.3g} m" if manifest.gsd_m else "unknown"
    vr = ("0..255 (8-bit input as is)" if manifest.value_range is None
          else ", ".join(f"{lo:g}..{hi:g}" for lo, hi in manifest.value_range))
    lines = [
        f"dataset {manifest.root} ({manifest.kind}, {manifest.created_by or 'unknown maker'}, "
        f"{manifest.created_at or 'date unknown'})",
        f"tiles: {manifest.tile_size} x {manifest.tile_size} px, {manifest.image_format}; labels "
        f"{manifest.label_encoding}",
        f"CRS: {crs_label(manifest.crs_wkt)}; ground pixel size (GSD): {gsd}",
        f"bands used as R,G,B: {','.join(str(b) for b in manifest.bands)}; value range: {vr}",
    ]
    if manifest.train_dataset:
        lines.append(f"train_dataset: {manifest.train_dataset}")
    lines.append(format_histogram(manifest))
    if sources:
        for s in manifest.sources:
            digest = (s.get("sha256") or "")[:16]
            extra = f", {s['crs']}" if s.get("crs") else ""
            lines.append(f"source {s.get('role')}: {s.get('path')} (sha256 {digest}…{extra})")
    return "\n".join(lines)


def summary_json(manifest: Manifest) -> dict[str, Any]:
    """The manifest plus the derived figures (``dataset info --json``)."""
    return {"path": str(manifest.root), "manifest": manifest.to_json(), "manifest_sha256": manifest.sha256(),
            "crs": crs_label(manifest.crs_wkt), "splits": split_rows(manifest)}
