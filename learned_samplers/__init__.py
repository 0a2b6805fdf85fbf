"""How to step: one differentiable few-step ODE solver family in k-diffusion form.

Classical solvers (Euler/DDIM, DPM-Solver++ 2M/3M, iPNDM, UniPC) are its zero-correction
special cases; learned methods (LD3 grids, D-ODE step scales, S4S coefficients) are fits of its
options. Framework-free: nothing here imports ComfyUI.
"""

from .coefficients import BASE_SOLVERS, CORRECTION_LIMIT, HISTORY, StepTables, apply_corrections, base_orders, base_tables
from .conventions import (
    CONVENTIONS,
    MIN_LAMBDA_GAP,
    PREDICTIONS,
    PredictionDenoiser,
    detect_convention,
    half_log_snr,
    resolve_convention,
    sigma_from_half_log_snr,
    signal_scale,
    start_noise_scale,
)
from .gaussian_mixture import GaussianMixtureDenoiser, GuidedDenoiser, single_gaussian_ode_solution
from .solver import (
    LEARNED_OPTIONS,
    StepCorrections,
    SAMPLERS,
    append_zero,
    check_sigmas,
    sample_dpmpp_2m,
    sample_dpmpp_3m,
    sample_euler,
    sample_ipndm,
    sample_learned,
    sample_unipc_bh1,
    sample_unipc_bh2,
)

__all__ = [
    "BASE_SOLVERS",
    "CONVENTIONS",
    "CORRECTION_LIMIT",
    "HISTORY",
    "MIN_LAMBDA_GAP",
    "LEARNED_OPTIONS",
    "StepCorrections",
    "PREDICTIONS",
    "SAMPLERS",
    "GaussianMixtureDenoiser",
    "GuidedDenoiser",
    "PredictionDenoiser",
    "StepTables",
    "append_zero",
    "apply_corrections",
    "base_orders",
    "base_tables",
    "check_sigmas",
    "detect_convention",
    "half_log_snr",
    "resolve_convention",
    "sample_dpmpp_2m",
    "sample_dpmpp_3m",
    "sample_euler",
    "sample_ipndm",
    "sample_learned",
    "sample_unipc_bh1",
    "sample_unipc_bh2",
    "sigma_from_half_log_snr",
    "signal_scale",
    "start_noise_scale",
    "single_gaussian_ode_solution",
]
