"""Schedules: classical sigma grids, and (with the file format) presets and sharing."""

from .grids import (
    AYS_SD1,
    align_your_steps,
    discrete_vp_sigmas,
    exponential,
    karras,
    loglinear_interp,
    sd15_schedules,
    time_uniform,
    uniform,
)

__all__ = [
    "AYS_SD1",
    "align_your_steps",
    "discrete_vp_sigmas",
    "exponential",
    "karras",
    "loglinear_interp",
    "sd15_schedules",
    "time_uniform",
    "uniform",
]
