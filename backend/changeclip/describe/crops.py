"""Where to crop each date around a change polygon, in pixels of the reference grid.

Both dates are read through the detection's grid readers (the other date already warped onto
the reference grid), so one window serves both dates and a polygon lands on the same ground in
each crop, whatever the inputs' CRSs and pixel grids. No torch here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from changeclip.raster.align import Grid, Window
from changeclip.raster.area import ground_pixel_size_m


@dataclass(frozen=True)
class CropSpec:
    """How much context a crop has around its polygon.

    Attributes:
        margin: Context added on each side, as a fraction of the polygon's larger bbox side.
        min_crop_m: Smallest crop side on the ground, metres (tiny polygons are seen in context:
            a 3-pixel polygon alone says nothing to CLIP).
        min_crop_px: Smallest crop side in pixels (grids without a CRS, or very coarse pixels).
    """

    margin: float = 0.25
    min_crop_m: float = 60.0
    min_crop_px: int = 32


DEFAULT_CROP = CropSpec()


def crop_window(bbox: tuple[float, float, float, float], grid: Grid, bounds: Window,
                spec: CropSpec = DEFAULT_CROP) -> Window:
    """The square pixel window of a polygon's crop.

    Args:
        bbox: The polygon's envelope ``(xmin, xmax, ymin, ymax)`` in the grid's CRS (OGR order).
        grid: The reference (north-up) grid.
        bounds: The processed window (valid overlap of both dates); the crop stays inside it,
            shifted rather than cut where the polygon lies near its edge, and is smaller only
            when ``bounds`` itself is smaller.
        spec: Context rules.

    Returns:
        A window of the grid, at least 1x1 pixels, inside ``bounds``.
    """
    x0, dx, _, y0, _, dy = grid.geotransform
    xmin, xmax, ymin, ymax = bbox
    c0, c1 = sorted(((xmin - x0) / dx, (xmax - x0) / dx))
    r0, r1 = sorted(((ymax - y0) / dy, (ymin - y0) / dy))
    side = max(c1 - c0, r1 - r0, 1.0) * (1.0 + 2.0 * spec.margin)
    cx, cy = (c0 + c1) / 2.0, (r0 + r1) / 2.0
    gsd = ground_pixel_size_m(grid, cx, cy)
    min_px = float(spec.min_crop_px)
    if gsd is not None and gsd > 0:
        min_px = max(min_px, spec.min_crop_m / gsd)
    size = max(int(math.ceil(side)), int(round(min_px)))
    width = min(size, bounds.width)
    height = min(size, bounds.height)
    xoff = int(round(cx - width / 2.0))
    yoff = int(round(cy - height / 2.0))
    xoff = min(max(xoff, bounds.xoff), bounds.xoff + bounds.width - width)
    yoff = min(max(yoff, bounds.yoff), bounds.yoff + bounds.height - height)
    return Window(xoff, yoff, max(1, width), max(1, height))
