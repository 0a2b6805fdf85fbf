"""Classical sigma grids, in host units, float64, strictly decreasing.

Each returns ``steps + 1`` sigmas, i.e. ``steps`` model calls. With ``final_zero=True`` the grid
ends like ComfyUI's schedulers: ``steps`` positive sigmas from sigma_max down to sigma_min, then
0 (a final denoising step); otherwise it ends at sigma_min.
"""

from __future__ import annotations

import math

import torch

from ..learned_samplers import append_zero, signal_scale


def _finish(sigmas: torch.Tensor, final_zero: bool) -> torch.Tensor:
    return append_zero(sigmas) if final_zero else sigmas


def _check(steps: int, sigma_min: float, sigma_max: float):
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min} and {sigma_max}")


def karras(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0,
           final_zero: bool = False) -> torch.Tensor:
    """Karras et al. (2022): uniform in sigma^(1/rho)."""
    _check(steps, sigma_min, sigma_max)
    ramp = torch.linspace(0, 1, steps + (not final_zero), dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _finish((hi + ramp * (lo - hi)) ** rho, final_zero)


def exponential(steps: int, sigma_min: float, sigma_max: float, final_zero: bool = False) -> torch.Tensor:
    """Uniform in log sigma (uniform half-log-SNR for VE models)."""
    _check(steps, sigma_min, sigma_max)
    logs = torch.linspace(math.log(sigma_max), math.log(sigma_min), steps + (not final_zero), dtype=torch.float64)
    return _finish(logs.exp(), final_zero)


def uniform(steps: int, sigma_min: float, sigma_max: float, final_zero: bool = False) -> torch.Tensor:
    """Uniform in sigma itself (flow time t for flow models)."""
    _check(steps, sigma_min, sigma_max)
    return _finish(torch.linspace(sigma_max, sigma_min, steps + (not final_zero), dtype=torch.float64), final_zero)


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


# ---------------------------------------------------------------------------------------------
# The grid coordinate: a model-independent position u in [0, 1], the fraction of the way from
# the model's sigma_max (u = 0) to its sigma_min (u = 1) measured in flow-equivalent time
# v = sigma / (alpha + sigma) (= t for flow models, sigma / (1 + sigma) for VE models). A grid
# fitted on one model maps onto another model's range through u.

def flow_time(sigma: torch.Tensor, convention: str) -> torch.Tensor:
    """v = sigma / (alpha + sigma): the flow time with the same signal-to-noise ratio."""
    return sigma / (signal_scale(sigma, convention) + sigma)


def sigma_from_flow_time(v: torch.Tensor, convention: str) -> torch.Tensor:
    """The inverse of ``flow_time``."""
    if convention == "flow":
        return v
    return v / (1 - v)


def grid_coordinate(sigmas, sigma_range, convention: str) -> torch.Tensor:
    """u [N+1] of host ``sigmas`` within ``sigma_range`` = (sigma_min, sigma_max); 0 maps past 1."""
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
    low, high = (flow_time(torch.tensor(float(s), dtype=torch.float64), convention) for s in sigma_range)
    return (high - flow_time(sigmas, convention)) / (high - low)


def sigmas_from_coordinate(u, sigma_range, convention: str) -> torch.Tensor:
    """Host sigmas for coordinates ``u`` within ``sigma_range`` (the inverse of grid_coordinate)."""
    u = torch.as_tensor(u, dtype=torch.float64)
    low, high = (flow_time(torch.as_tensor(s, dtype=torch.float64), convention) for s in sigma_range)
    return sigma_from_flow_time(high - u * (high - low), convention)


def discrete_vp_sigmas(beta_start: float = 0.00085, beta_end: float = 0.012, timesteps: int = 1000) -> torch.Tensor:
    """The ascending sigma table of a discrete VP model with a scaled-linear beta schedule.

    The defaults are Stable Diffusion 1.x/2.x/XL's: sigma from 0.0292 to 14.6146.
    """
    betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, timesteps, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    return ((1 - alphas_cumprod) / alphas_cumprod).sqrt()


# SD1.x/2.x/XL's discrete schedule range, the default model range of the demo and benchmarks
SD15_SIGMA_MIN, SD15_SIGMA_MAX = (float(s) for s in discrete_vp_sigmas()[[0, -1]])


def time_uniform(steps: int, sigma_table, final_zero: bool = False) -> torch.Tensor:
    """Uniform in the model's own timestep over an ascending discrete ``sigma_table``,
    interpolated in log sigma between table entries (ComfyUI's "simple"/"sgm_uniform" family)."""
    table = torch.as_tensor(sigma_table, dtype=torch.float64)
    if steps < 1 or table.ndim != 1 or len(table) < 2:
        raise ValueError("time_uniform needs steps >= 1 and an ascending table of at least 2 sigmas")
    if final_zero:  # ComfyUI's "simple": steps equal strides down from the top, then 0
        position = (len(table) - 1) - (torch.arange(steps, dtype=torch.float64) * (len(table) / steps)).floor()
    else:
        position = torch.linspace(len(table) - 1, 0, steps + 1, dtype=torch.float64)
    low = position.floor().long().clamp(max=len(table) - 2)
    frac = position - low
    logs = table.log()
    return _finish((logs[low] + frac * (logs[low + 1] - logs[low])).exp(), final_zero)


# Align Your Steps (Sabour, Fidler, Kreis 2024): the published 10-step grid for SD1.5-family
# models, resampled to other step counts by log-linear interpolation as its authors describe.
AYS_SD1 = (14.6146412293, 6.4745760956, 3.8636745985, 2.6946151520, 1.8841921177,
           1.3943805092, 0.9642583904, 0.6523686016, 0.3977456272, 0.1515232662, 0.0291671582)


def align_your_steps(steps: int, table=AYS_SD1, final_zero: bool = True) -> torch.Tensor:
    """AYS-style grid: the published table resampled to ``steps`` model calls."""
    values = torch.tensor(table, dtype=torch.float64)
    if steps + 1 != len(values):
        values = loglinear_interp(values, steps)
    if final_zero:  # as ComfyUI's AlignYourStepsScheduler: the last table entry becomes 0
        values = append_zero(values[:-1])
    return values


def sd15_schedules() -> dict:
    """ComfyUI's built-in schedules for a model on SD1.x's discrete schedule, each ending in 0:
    name -> (steps -> sigmas) for karras, exponential, time-uniform ("simple") and AYS."""
    table = discrete_vp_sigmas()
    low, high = float(table[0]), float(table[-1])
    return {
        "karras": lambda n: karras(n, low, high, final_zero=True),
        "exponential": lambda n: exponential(n, low, high, final_zero=True),
        "time-uniform": lambda n: time_uniform(n, table, final_zero=True),
        "ays": lambda n: align_your_steps(n),
    }


def _beta_quantiles(probabilities: torch.Tensor, a: float = 0.6) -> torch.Tensor:
    """Quantiles of the symmetric Beta(a, a) distribution (a <= 1), without scipy.

    With x = sin^2(theta) the density x^(a-1) (1-x)^(a-1) dx becomes the smooth
    2 (sin theta cos theta)^(2a-1) dtheta, whose cumulative integral is inverted by
    interpolation on a fine theta grid (error below 1e-6).
    """
    theta = torch.linspace(0, math.pi / 2, 20001, dtype=torch.float64)
    density = (torch.sin(theta) * torch.cos(theta)).clamp(min=1e-300) ** (2 * a - 1)
    cdf = torch.cat([density.new_zeros(1), torch.cumulative_trapezoid(density, theta)])
    cdf = cdf / cdf[-1]
    index = torch.searchsorted(cdf, probabilities.clamp(0, 1)).clamp(1, len(cdf) - 1)
    frac = (probabilities - cdf[index - 1]) / (cdf[index] - cdf[index - 1]).clamp(min=1e-300)
    angle = theta[index - 1] + frac.clamp(0, 1) * (theta[index] - theta[index - 1])
    return torch.sin(angle) ** 2


def beta(steps: int, sigma_min: float, sigma_max: float, convention: str = "ve", alpha: float = 0.6,
         final_zero: bool = True) -> torch.Tensor:
    """The beta schedule (Lee et al. 2024; ComfyUI's "beta", alpha = beta = 0.6): Beta(0.6, 0.6)
    quantiles of the grid coordinate, so steps crowd at both ends of the range. ComfyUI takes
    the quantiles of a discrete model's timestep; the coordinate (flow-equivalent time) is the
    same idea for any model."""
    _check(steps, sigma_min, sigma_max)
    positive = steps if final_zero else steps + 1
    u = _beta_quantiles(torch.linspace(0, 1, positive, dtype=torch.float64), alpha)
    sigmas = sigmas_from_coordinate(u, (sigma_min, sigma_max), convention)
    sigmas[0], sigmas[-1] = sigma_max, sigma_min  # endpoints exact
    return _finish(sigmas, final_zero)


def builtin_schedules(sigma_min: float, sigma_max: float, convention: str = "ve", sigma_table=None) -> dict:
    """The classical schedules a user already has, for a model's range: name -> (steps -> sigmas
    [steps+1] ending in 0). karras, exponential, beta, AYS-style (the published SD1.5 table
    placed on this range through the grid coordinate; the table itself on SD1.5's range), and
    time-uniform: uniform in the model's own timestep over an ascending discrete
    ``sigma_table`` (ComfyUI's "simple"), else uniform in the grid coordinate (a flow model's t).
    """
    low, high = float(sigma_min), float(sigma_max)
    ays_range = (AYS_SD1[-1], AYS_SD1[0])

    def ays(n):
        grid = align_your_steps(n)
        if abs(high - ays_range[1]) < 1e-3 * high and abs(low - ays_range[0]) < 1e-2 * low:
            return grid
        u = grid_coordinate(grid[:-1], ays_range, "ve")
        return append_zero(sigmas_from_coordinate(u, (low, high), convention))

    def time_uniform_grid(n):
        if sigma_table is not None:
            return time_uniform(n, sigma_table, final_zero=True)
        u = torch.linspace(0, 1, n + 1, dtype=torch.float64)[:-1]
        return append_zero(sigmas_from_coordinate(u, (low, high), convention))

    return {
        "karras": lambda n: karras(n, low, high, final_zero=True),
        "exponential": lambda n: exponential(n, low, high, final_zero=True),
        "time-uniform": time_uniform_grid,
        "ays": ays,
        "beta": lambda n: beta(n, low, high, convention),
    }


def reference_schedules(steps: int, sigma_min: float, sigma_max: float) -> dict:
    """Built-in grids to draw a learned one against: karras and exponential on the model's
    range, and AYS's SD1.5 table when the range is SD1.5's."""
    grids = {"karras": karras(steps, sigma_min, sigma_max, final_zero=True),
             "exponential": exponential(steps, sigma_min, sigma_max, final_zero=True)}
    if abs(sigma_max - AYS_SD1[0]) < 1e-3 * AYS_SD1[0] and abs(sigma_min - AYS_SD1[-1]) < 1e-2 * AYS_SD1[-1]:
        grids["ays (SD1.5)"] = align_your_steps(steps)
    return grids
