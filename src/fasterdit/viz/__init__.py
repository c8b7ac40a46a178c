"""Pictures: image grids (:mod:`~fasterdit.viz.images`) and the SNR-PDF figure (:mod:`~fasterdit.viz.snr`,
imported on use: it needs matplotlib)."""

from fasterdit.viz.images import image_grid, save_image_grid, to_uint8

__all__ = ["image_grid", "save_image_grid", "to_uint8"]
