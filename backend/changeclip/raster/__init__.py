"""Georeferenced raster handling (GDAL + numpy only, never torch): inputs, alignment, scaling,
tiling and blending, outputs."""
