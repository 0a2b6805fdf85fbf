"""Classical sigma grids, in host units, float64, strictly decreasing.

Each returns ``steps + 1`` sigmas; ``final_zero=True`` replaces the last one by 0 the way
ComfyUI schedules end (a final denoising step), keeping ``steps`` model calls.
"""

from __future__ import annotations

import math

import torch


def _finish(sigmas: torch.Tensor, final_zero: bool) -> torch.Tensor:
    if final_zero:
        sigmas = torch.cat([sigmas[:-1], sigmas.new_zeros(1)])
    return sigmas


def _check(steps: int, sigma_min: float, sigma_max: float):
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min} and {sigma_max}")


def karras(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0,
           final_zero: bool = False) -> torch.Tensor:
    """Karras et al. (2022): uniform in sigma^(1/rho)."""
    _check(steps, sigma_min, sigma_max)
    ramp = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _finish((hi + ramp * (lo - hi)) ** rho, final_zero)


def exponential(steps: int, sigma_min: float, sigma_max: float, final_zero: bool = False) -> torch.Tensor:
    """Uniform in log sigma (uniform half-log-SNR for VE models)."""
    _check(steps, sigma_min, sigma_max)
    logs = torch.linspace(math.log(sigma_max), math.log(sigma_min), steps + 1, dtype=torch.float64)
    return _finish(logs.exp(), final_zero)


def uniform(steps: int, sigma_min: float, sigma_max: float, final_zero: bool = False) -> torch.Tensor:
    """Uniform in sigma itself (flow time t for flow models)."""
    _check(steps, sigma_min, sigma_max)
    return _finish(torch.linspace(sigma_max, sigma_min, steps + 1, dtype=torch.float64), final_zero)


def loglinear_interp(sigmas, steps: int) -> torch.Tensor:
    """Resample a decreasing positive grid to ``steps + 1`` points, linear in log sigma.

    The one copy of the log-linear interpolation that Align-Your-Steps style tables use to go
    from a published grid to another step count; endpoints are kept.
    """
    values = torch.as_tensor(sigmas, dtype=torch.float64)
    if values.ndim != 1 or len(values) < 2 or not (values > 0).all():
        raise ValueError("loglinear_interp needs a 1-D grid of at least 2 positive sigmas")
    logs = values.log().flip(0)  # increasing, for interpolation
    src = torch.linspace(0, 1, len(values), dtype=torch.float64)
    dst = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
    idx = torch.searchsorted(src, dst).clamp(1, len(values) - 1)
    t = (dst - src[idx - 1]) / (src[idx] - src[idx - 1])
    out = logs[idx - 1] + t * (logs[idx] - logs[idx - 1])
    return out.exp().flip(0)
