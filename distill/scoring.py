"""How a solver is judged against the teacher: per-sample errors, their tail, and the built-in floor.

Every fit is scored per sample (the RMSE of each sample to the teacher's result), because a
few-step solver that lands a sample in another mode (another composition, for an artist) moves
that one sample a lot and the others not at all: the mean hides it, the tail shows it. A fit is
selected on its mean per-sample error among the candidates that add no flips to the best
built-in pair's (``no_worse_tail``: the errors past ``FLIP_FACTOR`` x the pair's median add up
to no more than the pair's), so it cannot buy typical accuracy with new flips; a tail of
ordinary errors a little longer than the pair's is no flip.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from ..learned_samplers import sample_learned
from ..schedules.grids import grid_coordinate
from ..schedules.solver import FittedSteps
from .prompts import rows_of
from .settings import NoiseLevels, SolverSetup

# the worst share of samples ``tail_error`` averages
TAIL_SHARE = 0.1
# an error past this multiple of the best built-in pair's median is flip-like: a sample landing
# in another mode is off by 10-100x a typical sample's error, an ordinary tail by well under 3x
FLIP_FACTOR = 3.0


def _rms(values: torch.Tensor) -> torch.Tensor:
    """[B] the RMS of each sample of ``values`` [B, ...], float64 on the CPU."""
    return values.double().flatten(1).pow(2).mean(1).sqrt().cpu()  # reduced where they are, [B] copied


def _results(model, start: torch.Tensor, fit: FittedSteps, setup: SolverSetup, batch_size: int, dtype=None):
    """``fit``'s results for the start states [S, ...], ``batch_size`` at a time without
    gradients: yields (slice of ``start``, results [B, ...]). ``fit.base`` overrides the setup's."""
    device = setup.device or start.device
    options = {**setup.solver_options(), **fit.solver_options()}
    with torch.no_grad():
        for first in range(0, len(start), batch_size):
            chunk = slice(first, min(first + batch_size, len(start)))
            states = start[chunk].to(device=device, dtype=dtype or start.dtype)
            extra_args = rows_of(setup.extra_args, chunk)
            yield chunk, sample_learned(model, states, fit.sigmas.to(states.dtype), extra_args, None, True, **options)


def _rows(setup: SolverSetup, rows) -> SolverSetup:
    """``setup`` for the states ``rows`` of those its per-sample keywords are aligned with."""
    extra_args = rows_of(setup.extra_args, rows)
    return setup if extra_args is setup.extra_args else dataclasses.replace(setup, extra_args=extra_args)


def per_sample_errors(model, teacher, indices, fit: FittedSteps, setup: SolverSetup, batch_size: int = 64,
                      dtype=None) -> torch.Tensor:
    """RMSE of each sample [len(indices)] (float64, CPU) of ``fit`` to the teacher's results,
    run ``batch_size`` samples at a time without gradients. ``fit.base`` overrides the setup's."""
    targets = teacher.final[indices]
    errors = [_rms(out.double().cpu() - targets[chunk].double())
              for chunk, out in _results(model, teacher.start[indices], fit, _rows(setup, indices), batch_size, dtype)]
    return torch.cat(errors) if errors else torch.zeros(0, dtype=torch.float64)


def overall_rmse(errors: torch.Tensor) -> float:
    """The RMSE over every value of every sample, from per-sample RMSEs (same size samples)."""
    return math.sqrt(float(errors.pow(2).mean())) if len(errors) else float("nan")


def tail_error(errors: torch.Tensor) -> float:
    """The mean of the worst ``TAIL_SHARE`` of per-sample errors (at least one sample)."""
    if not len(errors):
        return float("nan")
    worst = max(1, math.ceil(TAIL_SHARE * len(errors)))
    return float(errors.sort(descending=True).values[:worst].mean())


def mean_error(errors: torch.Tensor) -> float:
    """The mean per-sample error, what candidates are ranked by (NaN and inf rank last)."""
    value = float(errors.mean()) if len(errors) else float("nan")
    return value if math.isfinite(value) else math.inf


def capped(distances: torch.Tensor, cap: float | None) -> torch.Tensor:
    """Each distance d counted as cap * log(1 + d / cap): d where d << cap, growing only
    logarithmically past it (the "capped" loss, and ``typical_error``); d itself without a
    positive cap."""
    if cap is None or not cap > 0:
        return distances
    return cap * torch.log1p(distances / cap)


def typical_error(errors: torch.Tensor, floor_errors: torch.Tensor) -> float:
    """The mean of ``errors`` each ``capped`` at the floor's median error: how close a candidate
    keeps the typical samples, a flip counting as a few typical errors instead of dozens.

    What two fits from different starts are chosen between. The mean alone picks the one with a
    few flips less even when it is worse on most samples: on the hard mixture at NFE 5 the fit
    from the teacher-trajectory grid had a 10 % lower mean and a 43 % higher median than the
    fit from ipndm + karras. NaN and inf rank last."""
    if not len(errors):
        return math.inf
    value = float(capped(errors.double(), float(floor_errors.double().median())).mean())
    return value if math.isfinite(value) else math.inf


def flip_excess(errors: torch.Tensor, threshold: float) -> float:
    """The mean over samples of how far each error goes past ``threshold`` (0 for the others)."""
    return float((errors.double() - threshold).clamp(min=0).mean()) if len(errors) else float("nan")


def no_worse_tail(errors: torch.Tensor, floor_errors: torch.Tensor, slack: float = 1e-9) -> bool:
    """Whether ``errors`` add no flips to ``floor_errors`` (same samples): past ``FLIP_FACTOR`` x
    the floor's median error, they go no farther in sum than the floor's errors do.

    Only flip-like errors count: comparing the worst tenth (``tail_error``) instead turned away
    fits that were better on nearly every sample because their worst ordinary errors were a few
    percent above the floor's (on the power-law mixture at NFE 10: 0.62x the floor's mean, its
    worst tenth 0.0140 against 0.0134, its worst error 0.017 against 0.014, no flip in either)."""
    if not len(errors) or not bool(torch.isfinite(errors).all()):
        return False
    threshold = FLIP_FACTOR * float(floor_errors.double().median())
    return flip_excess(errors, threshold) <= flip_excess(floor_errors, threshold) * (1 + slack)


def error_summary(errors: torch.Tensor) -> dict:
    """mean, median, p90, p95 of per-sample errors, and ``tail`` (``tail_error``)."""
    if not len(errors):
        return {}
    e = errors.double()
    return {"mean": float(e.mean()), "median": float(e.median()), "p90": float(e.quantile(0.9)),
            "p95": float(e.quantile(0.95)), "tail": tail_error(e)}


def ratio_interval(learned: torch.Tensor, reference: torch.Tensor, resamples: int = 2000, seed: int = 0,
                   level: float = 0.9) -> tuple:
    """A bootstrap interval (low, high) of mean(learned) / mean(reference) over paired samples."""
    gen = torch.Generator().manual_seed(seed)
    count = len(learned)
    picks = torch.randint(0, count, (resamples, count), generator=gen)
    ratios = learned.double()[picks].mean(1) / reference.double()[picks].mean(1).clamp(min=1e-300)
    tail = (1 - level) / 2
    return float(ratios.quantile(tail)), float(ratios.quantile(1 - tail))


def builtin_pairs(schedules: dict, nfe: int, bases, levels: NoiseLevels) -> list:
    """Every (base, schedule name, FittedSteps) of ``bases`` x ``schedules`` at ``nfe`` steps;
    each grid starts at sigma_max and stays inside the model's range (``levels``, its
    convention resolved; a schedule that rounds
    the range, as published tables do, is clamped onto it). A schedule that repeats an earlier
    one's grid, or gives no strictly decreasing grid of ``nfe`` steps, is left out."""
    (sigma_min, sigma_max), convention = levels.sigma_range, levels.convention
    pairs, grids = [], []
    for name, make in schedules.items():
        sigmas = torch.as_tensor(make(nfe), dtype=torch.float64).clone()
        if len(sigmas) != nfe + 1:
            if name == "given":
                raise ValueError(f"the initial grid for NFE {nfe} has {len(sigmas)} sigmas; it needs {nfe + 1}")
            continue  # a host schedule that does not give this step count is no candidate
        positive = sigmas > 0
        sigmas[positive] = sigmas[positive].clamp(sigma_min, sigma_max)
        sigmas[0] = sigma_max
        if not (sigmas[1:] < sigmas[:-1]).all():
            continue  # a schedule that collapses at this step count (e.g. repeated timesteps) is no candidate
        if any(torch.allclose(sigmas, seen, rtol=1e-6, atol=0) for seen in grids):
            continue  # the same grid under another name is scored once, under its first name
        grids.append(sigmas)
        coordinate = grid_coordinate(sigmas, (sigma_min, sigma_max), convention)
        for base in bases:
            pairs.append((base, name, FittedSteps(sigmas=sigmas, coordinate=coordinate, base=base,
                                                  corrector=base.startswith("unipc"))))
    return pairs


def diverged(model, start: torch.Tensor, fit: FittedSteps, setup: SolverSetup, limit: float,
             batch_size: int = 64) -> torch.Tensor:
    """bool [len(start)]: which of the start states [S, ...] ``fit`` takes to a result whose RMS
    is above ``limit`` (a divergence; no teacher needed, only the result's size), run
    ``batch_size`` at a time without gradients. A non-finite result counts as diverged."""
    flags = [~(_rms(out) <= limit) for _, out in _results(model, start, fit, setup, batch_size)]
    return torch.cat(flags) if flags else torch.zeros(0, dtype=torch.bool)


def score_pairs(model, teacher, indices, pairs, setup: SolverSetup, batch_size: int) -> list:
    """Each pair's per-sample errors on ``indices``, best first by mean (``mean_error``):
    [(score, base, schedule name, FittedSteps, errors)]."""
    scored = []
    for base, name, fit in pairs:
        errors = per_sample_errors(model, teacher, indices, fit, setup, batch_size)
        score = mean_error(errors)
        scored.append((score if math.isfinite(score) else math.inf, base, name, fit, errors))
    scored.sort(key=lambda item: item[0])
    return scored


__all__ = ["FLIP_FACTOR", "TAIL_SHARE", "builtin_pairs", "capped", "diverged", "error_summary", "flip_excess",
           "mean_error", "no_worse_tail",
           "overall_rmse", "per_sample_errors", "ratio_interval", "score_pairs", "tail_error", "typical_error"]
