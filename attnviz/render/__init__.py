"""Renderers: arrays and PIL images in, RGB PIL images out (they never write files)."""
from __future__ import annotations

from attnviz.render.charts import CHART_SIZE, bar_axes, channel_bars, channel_depth, top_channels
from attnviz.render.grid import GridCell, GridLayout, GridRow, grid, grid_layout, grid_size
from attnviz.render.overlay import bilinear, blend, blender, colorize, colormap_lut, fit, output_size, overlay

__all__ = [
    "output_size", "colormap_lut", "colorize", "bilinear", "fit", "blender", "blend", "overlay",
    "CHART_SIZE", "top_channels", "bar_axes", "channel_bars", "channel_depth",
    "GridCell", "GridRow", "GridLayout", "grid_layout", "grid_size", "grid",
]
