"""Schedules: classical sigma grids, and (with the file format) presets and sharing."""

from .files import (
    LearnedSolverFileError,
    load_learned_solver,
    read_metadata,
    save_learned_solver,
    solver_from_bytes,
)
from .grids import (
    AYS_SD1,
    SD15_SIGMA_MAX,
    SD15_SIGMA_MIN,
    align_your_steps,
    discrete_vp_sigmas,
    exponential,
    grid_coordinate,
    karras,
    loglinear_interp,
    reference_schedules,
    sd15_schedules,
    sigmas_from_coordinate,
    time_uniform,
    uniform,
)
from .solver import FittedSteps, LearnedSolver, ModelFamilyError

__all__ = [
    "FittedSteps",
    "LearnedSolver",
    "ModelFamilyError",
    "grid_coordinate",
    "sigmas_from_coordinate",
    "LearnedSolverFileError",
    "load_learned_solver",
    "read_metadata",
    "save_learned_solver",
    "solver_from_bytes",
    "AYS_SD1",
    "SD15_SIGMA_MAX",
    "SD15_SIGMA_MIN",
    "align_your_steps",
    "discrete_vp_sigmas",
    "exponential",
    "karras",
    "loglinear_interp",
    "reference_schedules",
    "sd15_schedules",
    "time_uniform",
    "uniform",
]
