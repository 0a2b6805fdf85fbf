"""How to fit: teacher recording, losses and optimisers for the solver family in
``learned_samplers`` (LD3 grids, D-ODE step scales, S4S coefficients, S4S-Alt, and ``auto``)."""

from .fit import (
    FitCancelled,
    FitDiverged,
    autocast_model,
    fit_gradient,
    fit_step_scales,
    rmse,
    start_noise_scale,
)
from .memory import checkpointed_blocks, checkpointed_model, network_blocks
from ..schedules.grids import grid_coordinate, sigmas_from_coordinate
from ..schedules.solver import FittedSteps, LearnedSolver
from .grid import MonotoneGrid
from .pipeline import candidate_schedules, distill, start_states
from .settings import LOSSES, METHODS, CompareSettings, FitSettings, NoiseLevels, RunHooks, SolverSetup
from .teacher import RefinedTeacher, TeacherRecord, record_teacher, refine_teacher, teacher_grid

__all__ = [
    "LOSSES",
    "METHODS",
    "FitCancelled",
    "FitDiverged",
    "CompareSettings",
    "FitSettings",
    "NoiseLevels",
    "RunHooks",
    "SolverSetup",
    "FittedSteps",
    "LearnedSolver",
    "MonotoneGrid",
    "RefinedTeacher",
    "TeacherRecord",
    "autocast_model",
    "checkpointed_blocks",
    "checkpointed_model",
    "candidate_schedules",
    "distill",
    "fit_gradient",
    "fit_step_scales",
    "grid_coordinate",
    "network_blocks",
    "record_teacher",
    "refine_teacher",
    "rmse",
    "sigmas_from_coordinate",
    "start_noise_scale",
    "start_states",
    "teacher_grid",
]
