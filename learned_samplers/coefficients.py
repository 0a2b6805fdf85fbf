"""Step weights of the one solver family.

Every solver here is a linear multistep method in the host frame (ComfyUI's x and sigma):

    x_{i+1} = sum_k X[i, k] * x_{i-k}  +  sum_k W[i, k] * D_{i-k}            (predictor)
    x_{i+1} <- cX[i] * x_i + sum_k C[i, k] * D_{i+1-k}     once D_{i+1} is known (corrector)

with D_j the denoiser output of step j and k = 0 the newest entry. The base solvers give
analytic X, W, C computed from the grid in half-log-SNR lambda (exponential-integrator /
data-prediction form, see ``conventions``); learned parameters are zero-initialised additive
corrections on top, scaled by the step's natural D weight ``s_i = alpha_{i+1} * (1 - e^{-h_i})``
so that a correction of 0.1 means "10% of this step's update" at every noise level:

* ``d_corrections`` [N, K]: W[i, k] += s_i * c[i, k]            (S4S-style coefficient fit)
* ``step_scales``   [N]:    W[i, 0] += s_i * d_i, W[i, 1] -= s_i * d_i   (D-ODE: D~ = D + d (D - D_prev));
  step 0 has no previous output and uses (D_0 - x_0) instead, a rescaling of its step size.
* ``corrector_corrections`` [N]: C[i, 0] += s_i * c_i, C[i, 1] -= s_i * c_i  (weight on D_{i+1} - D_i).

All arithmetic is plain torch on float64 scalars, so gradients reach the grid and every
correction. A step that ends on sigma = 0 is a denoising step (x = D plus corrections), as in
k-diffusion.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import factorial

import torch

from .conventions import half_log_snr, signal_scale

HISTORY = 4  # denoiser outputs (and states) a step may combine: iPNDM uses four

# the largest correction a fit may learn: corrections are relative to the step's own update, and
# fits land well inside +-1.1 (every base at NFE 3-10 on the mixture, the shipped preset); past
# a few whole updates a "correction" no longer describes the base solver, and it is what turns
# a hostile file's coefficients into NaN. The fitter projects onto it, the file reader enforces it.
CORRECTION_LIMIT = 4.0

BASE_SOLVERS = ("euler", "dpmpp_2m", "dpmpp_3m", "ipndm", "unipc_bh1", "unipc_bh2")

_ADAMS_BASHFORTH = {
    1: (1.0,),
    2: (3 / 2, -1 / 2),
    3: (23 / 12, -16 / 12, 5 / 12),
    4: (55 / 24, -59 / 24, 37 / 24, -9 / 24),
}


@dataclass
class StepTables:
    """Per-step weights for N steps; tensors share the grid's dtype and device.

    x_weights [N, HISTORY], d_weights [N, HISTORY], d_scale [N], corrector_x [N],
    corrector_d [N, HISTORY + 1] (entry 0 weighs the new output D_{i+1}), corrector_on: list of
    N bools, orders: list of N ints (the base order used at each step).
    """

    x_weights: torch.Tensor
    d_weights: torch.Tensor
    d_scale: torch.Tensor
    corrector_x: torch.Tensor
    corrector_d: torch.Tensor
    corrector_on: list
    orders: list
    uses_x_history: bool


def _pad(entries, length, like):
    """Stack scalar tensors/floats into a 1-D tensor of ``length``, zero-padded."""
    zero = like.new_zeros(())
    items = [e if torch.is_tensor(e) else zero + e for e in entries]
    items += [zero] * (length - len(items))
    return torch.stack(items)


def base_orders(base: str, steps: int, final_denoise: bool, max_order: int | None = None) -> list:
    """Order of each of ``steps`` steps (1 = Euler/DDIM), warm-up and final steps included.

    ``max_order`` caps the history a base may use (ComfyUI's ``sample_ipndm(max_order=...)``).
    """
    if base == "euler":
        orders = [1] * steps
    elif base in ("dpmpp_2m", "dpmpp_3m", "ipndm"):
        top = {"dpmpp_2m": 2, "dpmpp_3m": 3, "ipndm": 4}[base]
        orders = [min(top, i + 1) for i in range(steps)]
    else:  # UniPC: order 3 with lower-order warm-up and final steps, as in the reference code
        top = max(1, min(3, steps - 1))
        orders = [k if k < top else min(top, steps + 1 - k) for k in range(1, steps + 1)]
    if max_order is not None:
        orders = [min(order, max_order) for order in orders]
    if final_denoise:
        orders[-1] = 1
    return orders


def _unipc_rhos(h, rks, order, variant):
    """UniPC's predictor and corrector weights for one step (data prediction, B(h) variants).

    ``rks``: [order - 1] ratios (lambda_{i-m} - lambda_i) / h. Returns (B_h, rho_p, rho_c) with
    rho_p of length order - 1 and rho_c of length order (last entry weighs D_{i+1} - D_i).
    """
    hh = -h
    h_phi_1 = torch.expm1(hh)
    b_h = hh if variant == "bh1" else h_phi_1
    h_phi_k = h_phi_1 / hh - 1
    ratios = torch.cat([rks, h.new_ones(1)])
    rows, rhs = [], []
    for n in range(1, order + 1):
        rows.append(ratios ** (n - 1))
        rhs.append(h_phi_k * factorial(n) / b_h)
        h_phi_k = h_phi_k / hh - 1 / factorial(n + 1)
    R, b = torch.stack(rows), torch.stack(rhs)
    if order == 1:
        rho_p = h.new_zeros(0)
        rho_c = h.new_full((1,), 0.5)
    else:
        rho_p = h.new_full((1,), 0.5) if order == 2 else torch.linalg.solve(R[:-1, :-1], b[:-1])
        rho_c = torch.linalg.solve(R, b)
    return b_h, rho_p, rho_c


@dataclass
class GridStep:
    """Step i of a grid as every base's row reads it: sigmas [N+1], alpha [N+1] (host units),
    lam [N or N+1] (half-log-SNR of the positive sigmas), the base order used, and the plain
    DDIM step's weights: carry on x_i and scale on D_i (alpha_{i+1} (1 - e^{-h_i}))."""

    i: int
    order: int
    sigmas: torch.Tensor
    alpha: torch.Tensor
    lam: torch.Tensor
    carry: torch.Tensor
    scale: torch.Tensor

    @property
    def h(self) -> torch.Tensor:
        return self.lam[self.i + 1] - self.lam[self.i]

    def ratio(self, back: int) -> torch.Tensor:
        """(lambda_{i-back} - lambda_{i-back-1}) / h: the earlier step's length over this one's."""
        return (self.lam[self.i - back] - self.lam[self.i - back - 1]) / self.h


def _euler_row(step: GridStep) -> tuple:
    """(x weights, D weights), newest first: the DDIM / Euler step."""
    return [step.carry], [step.scale]


def _dpmpp_2m_row(step: GridStep) -> tuple:
    r = step.ratio(0)
    return [step.carry], [step.scale * (1 + 1 / (2 * r)), -step.scale / (2 * r)]


def _dpmpp_3m_row(step: GridStep) -> tuple:
    h, a_next = step.h, step.alpha[step.i + 1]
    phi_2 = torch.expm1(-h) / h + 1
    r0 = step.ratio(0)
    d1_0 = _pad([1 / r0, -1 / r0], 3, h)
    if step.order == 2:
        update = a_next * phi_2 * d1_0
    else:
        r1 = step.ratio(1)
        d1_1 = _pad([0.0, 1 / r1, -1 / r1], 3, h)
        d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
        d2 = (d1_0 - d1_1) / (r0 + r1)
        # d2 ~ h^2 D''/2, whose exact weight is int_0^h e^-u (h-u)^2 du / h^2 =
        # 2 * (1/2 - phi_2/h): twice k-diffusion's phi_3. With the reference's single
        # phi_3 the step is only second order (see docs/how-it-works.md, "DPM++ 3M").
        phi_3 = 2 * (0.5 - phi_2 / h)
        update = a_next * (phi_2 * d1 + phi_3 * d2)
    return [step.carry], list(update + _pad([step.scale], 3, h))


def _ipndm_row(step: GridStep) -> tuple:
    # Adams-Bashforth on the noise estimate eps_j = (x_j - alpha_j D_j) / sigma_j in the VE
    # frame x/alpha, sigma/alpha; in the host frame the step keeps an alpha ratio
    i, sigmas, alpha = step.i, step.sigmas, step.alpha
    gain = sigmas[i + 1] - sigmas[i] * alpha[i + 1] / alpha[i]
    beta = _ADAMS_BASHFORTH[step.order]
    x_row = [alpha[i + 1] / alpha[i] + gain * beta[0] / sigmas[i]]
    x_row += [gain * beta[k] / sigmas[i - k] for k in range(1, step.order)]
    return x_row, [-gain * beta[k] * alpha[i - k] / sigmas[i - k] for k in range(step.order)]


def _unipc_ratios(step: GridStep, order: int) -> torch.Tensor:
    """[order - 1] (lambda_{i-m} - lambda_i) / h for m = 1 .. order - 1."""
    if order == 1:
        return step.h.new_zeros(0)
    return torch.stack([(step.lam[step.i - m] - step.lam[step.i]) / step.h for m in range(1, order)])


def _unipc_row(step: GridStep, variant: str) -> tuple:
    rks = _unipc_ratios(step, step.order)
    b_h, rho_p, _ = _unipc_rhos(step.h, rks, step.order, variant)
    pull = step.alpha[step.i + 1] * b_h * rho_p / rks
    return [step.carry], [step.scale + pull.sum()] + list(-pull)


def _unipc_corrector_row(step: GridStep, variant: str) -> list:
    """UniPC's corrector weights [D_{i+1}, D_i, D_{i-1}, ...] for step i (order at most 3)."""
    order = min(step.order, 3)
    rks = _unipc_ratios(step, order)
    b_h, _, rho_c = _unipc_rhos(step.h, rks, order, variant)
    a_next = step.alpha[step.i + 1]
    pull = a_next * b_h * rho_c[:-1] / rks if order > 1 else step.h.new_zeros(0)
    new = a_next * b_h * rho_c[-1]
    return [-new, step.scale + pull.sum() + new] + list(-pull)


# each base's row at a step of order 2 or more (order 1 is always the Euler row)
_ROWS = {"euler": _euler_row, "dpmpp_2m": _dpmpp_2m_row, "dpmpp_3m": _dpmpp_3m_row, "ipndm": _ipndm_row,
         "unipc_bh1": lambda step: _unipc_row(step, "bh1"), "unipc_bh2": lambda step: _unipc_row(step, "bh2")}


def base_tables(sigmas: torch.Tensor, base: str, convention: str, corrector: bool,
                max_order: int | None = None) -> StepTables:
    """Analytic weights of ``base`` on the grid ``sigmas`` [N+1] (host units, float64): each
    step's row from the base's own row function, and UniPC's corrector where ``corrector``."""
    steps = sigmas.shape[0] - 1
    final_denoise = bool(sigmas[-1] == 0)
    orders = base_orders(base, steps, final_denoise, max_order)
    alpha = signal_scale(sigmas, convention)
    lam = half_log_snr(sigmas[:-1] if final_denoise else sigmas, convention)
    variant = "bh1" if base == "unipc_bh1" else "bh2"
    xs, ws, scales, cxs, cds, c_on = [], [], [], [], [], []
    for i in range(steps):
        if final_denoise and i == steps - 1:
            carry, scale = sigmas[i + 1] * 0.0, alpha[i + 1] + 0.0
        else:
            carry = sigmas[i + 1] / sigmas[i]
            scale = alpha[i + 1] - sigmas[i + 1] * alpha[i] / sigmas[i]  # alpha_{i+1} * (1 - exp(-h_i))
        step = GridStep(i, orders[i], sigmas, alpha, lam, carry, scale)
        x_row, d_row = (_ROWS[base] if step.order > 1 else _euler_row)(step)
        xs.append(_pad(x_row, HISTORY, sigmas))
        ws.append(_pad(d_row, HISTORY, sigmas))
        scales.append(scale)
        c_on.append(corrector and i < steps - 1)
        cxs.append(carry if c_on[-1] else sigmas.new_zeros(()))
        cds.append(_pad(_unipc_corrector_row(step, variant), HISTORY + 1, sigmas) if c_on[-1]
                   else sigmas.new_zeros(HISTORY + 1))
    return StepTables(x_weights=torch.stack(xs), d_weights=torch.stack(ws), d_scale=torch.stack(scales),
                      corrector_x=torch.stack(cxs), corrector_d=torch.stack(cds), corrector_on=c_on, orders=orders,
                      uses_x_history=base == "ipndm" and max(orders) > 1)


def apply_corrections(tables: StepTables, d_corrections=None, step_scales=None,
                      corrector_corrections=None) -> StepTables:
    """Add learned corrections (see module docstring) to base tables; returns new tables."""
    x_w, d_w, c_d = tables.x_weights, tables.d_weights, tables.corrector_d
    scale = tables.d_scale[:, None]
    if d_corrections is not None:
        k = d_corrections.shape[1]
        d_w = d_w + torch.nn.functional.pad(scale * d_corrections, (0, HISTORY - k))
    if step_scales is not None:
        push = tables.d_scale * step_scales
        pull = torch.cat([push.new_zeros(1), push[1:]])
        d_w = d_w + torch.stack([push, -pull] + [torch.zeros_like(push)] * (HISTORY - 2), dim=1)
        first = torch.zeros_like(x_w)
        first[0, 0] = 1.0
        x_w = x_w - first * push[0]
    if corrector_corrections is not None:
        delta = tables.d_scale * corrector_corrections
        c_d = c_d + torch.nn.functional.pad(torch.stack([delta, -delta], dim=1), (0, HISTORY - 1))
    return StepTables(
        x_weights=x_w,
        d_weights=d_w,
        d_scale=tables.d_scale,
        corrector_x=tables.corrector_x,
        corrector_d=c_d,
        corrector_on=tables.corrector_on,
        orders=tables.orders,
        uses_x_history=tables.uses_x_history,
    )
