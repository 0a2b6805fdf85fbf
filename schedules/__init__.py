"""Schedules: classical sigma grids, and (with the file format) presets and sharing."""

from .grids import exponential, karras, loglinear_interp, uniform

__all__ = ["exponential", "karras", "loglinear_interp", "uniform"]
