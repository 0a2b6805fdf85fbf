"""Discrete-timestep models (SD1.x, SDXL: 1000 training timesteps) in a fit, for every host.

Such a model maps sigma to the nearest of its training timesteps, which has no gradient, so a
fit of the grid would learn nothing through the model's input. During the fit the host's
timestep lookup is replaced by ``fractional_timestep`` (log-sigma interpolated between the
two neighbouring training steps: the exact inverse of the hosts' own ``sigma(t)``), and the
finished grid and evaluation sigmas are moved onto the model's discrete sigmas
(``snap_to_discrete``), where the host's nearest-step lookup is exact (each moves by at most
half a training step).
"""

from __future__ import annotations

import copy

import torch

from ..learned_samplers import half_log_snr, sigma_from_half_log_snr
from ..schedules.grids import grid_coordinate
from ..schedules.solver import FittedSteps


def fractional_timestep(log_sigmas):
    """``timestep(sigma)``: the fractional training step of host sigmas ``sigma`` (any shape) for
    a model whose ascending ``log_sigmas`` [T] are its training steps' log-sigmas; differentiable
    in sigma, clamped to [0, T - 1]."""
    table_cpu = torch.as_tensor(log_sigmas).detach().clone().float()

    def timestep(sigma):
        log_sigma = sigma.log().float()
        table = table_cpu.to(log_sigma.device)
        upper = torch.searchsorted(table, log_sigma.detach().reshape(-1)).clamp(1, len(table) - 1)
        lower = upper - 1
        weight = (log_sigma.reshape(-1) - table[lower]) / (table[upper] - table[lower])
        t = (lower.to(weight.dtype) + weight).clamp(0, len(table) - 1)
        return t.reshape(sigma.shape).to(sigma.device)

    return timestep


def is_discrete(timestep, sigmas) -> bool:
    """Whether a host's ``timestep(sigma)`` snaps to training steps: asked at a sigma halfway (in
    log) between two of its ascending ``sigmas``, it answers a whole number."""
    sigmas = torch.as_tensor(sigmas).detach().float().cpu()
    if len(sigmas) < 3:
        return False
    middle = len(sigmas) // 2
    probe = (sigmas[middle].log() + sigmas[middle + 1].log()).div(2).exp().reshape(1)
    with torch.no_grad():
        t = float(torch.as_tensor(timestep(probe.to(sigmas.dtype))).reshape(-1)[0])
    return t == round(t)


def snap_to_discrete(fit: FittedSteps, table, sigma_range, convention: str) -> FittedSteps:
    """``fit`` with its sigmas and evaluation sigmas moved to the nearest of the model's discrete
    ``table`` sigmas (a final 0 stays), so ComfyUI's nearest-timestep lookup is exact."""
    table = torch.as_tensor(table, dtype=torch.float64).sort().values

    def nearest(values):
        logs = values.log()
        index = (logs[:, None] - table.log()[None, :]).abs().argmin(dim=1)
        return table[index]

    positive = fit.sigmas[fit.sigmas > 0]
    snapped = nearest(positive)
    # neighbours that land on the same training step would repeat a sigma: keep them apart
    for i in range(1, len(snapped)):
        if snapped[i] >= snapped[i - 1]:
            below = table[table < snapped[i - 1]]
            snapped[i] = below[-1] if len(below) else snapped[i] * 0.5
    sigmas = torch.cat([snapped, fit.sigmas[len(positive):]])
    offsets = None
    if fit.eval_offsets is not None:
        evaluated = sigma_from_half_log_snr(half_log_snr(fit.sigmas[: len(fit.eval_offsets)], convention)
                                            + fit.eval_offsets, convention)
        on_table = nearest(evaluated)
        offsets = half_log_snr(on_table, convention) - half_log_snr(sigmas[: len(fit.eval_offsets)], convention)
    result = copy.copy(fit)
    result.sigmas = sigmas
    result.coordinate = grid_coordinate(sigmas, sigma_range, convention)
    result.eval_offsets = offsets
    return result


def snap_solver(solver, table):
    """Every fit of ``solver`` (a ``LearnedSolver``, changed in place and returned) snapped onto
    the discrete ``table`` (``snap_to_discrete``); None: a continuous model, left alone."""
    if solver is not None and table is not None:
        for n, fit in solver.fits.items():
            solver.fits[n] = snap_to_discrete(fit, table, solver.sigma_range, solver.convention)
    return solver


__all__ = ["fractional_timestep", "is_discrete", "snap_solver", "snap_to_discrete"]
