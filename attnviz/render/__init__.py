"""Renderers: arrays and PIL images in, RGB PIL images out (they never write files)."""
from __future__ import annotations

from attnviz.render.charts import CHART_SIZE, channel_bars, channel_depth, channel_figure, top_channels
from attnviz.render.grid import GridCell, GridLayout, GridRow, grid, grid_layout, grid_size
from attnviz.render.overlay import blend, colorize, colormap_lut, fit, output_size, overlay

__all__ = [
    "output_size", "colormap_lut", "colorize", "fit", "blend", "overlay",
    "CHART_SIZE", "top_channels", "channel_figure", "channel_bars", "channel_depth",
    "GridCell", "GridRow", "GridLayout", "grid_layout", "grid_size", "grid",
]
