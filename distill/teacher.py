"""Teacher recording: one accurate run over a batch of noises, kept at the sigmas the fit needs.

The teacher grid contains every grid point the students will be compared at (the union of
their base grids), with extra points spread in between as a Karras grid spreads them (uniform in
sigma^(1/7), denser toward the end), so one run serves several NFEs and gives D-ODE its
per-step targets exactly. Under classifier-free guidance that spacing is what keeps a 32-step
teacher accurate: on the guided benchmark mixture at CFG 7 (``benchmarks/distill_benchmark.py``
``--model guided``), 32 steps of UniPC (bh2) land 0.0002-0.001 (median per-sample RMSE, three
prompts) from a 256-step float64 run on this grid and 0.001-0.010 (with seeds in another mode)
uniform in half-log-SNR; DPM++ 3M 0.002-0.005 and 0.004-0.023; without guidance UniPC 0.0002
and 0.0003.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from ..learned_samplers import append_zero, half_log_snr, resolve_convention, sample_learned, sigma_from_half_log_snr
from .prompts import plain_model, rows_of
from .settings import NoiseLevels, RunHooks

# Sigmas closer than this (relative) are the same grid point.
SAME_SIGMA = 1e-6


@dataclass
class TeacherRecord:
    """What one teacher run leaves behind; tensors live on the CPU.

    start: [M, ...] initial states x at sigmas[0] (noise-scaled); final: [M, ...] the teacher's
    result; kept_sigmas: [K] host sigmas where ``states`` [K, M, ...] were recorded;
    sigmas: [T+1] the teacher's own grid.
    """

    start: torch.Tensor
    final: torch.Tensor
    sigmas: torch.Tensor
    kept_sigmas: torch.Tensor
    states: torch.Tensor
    base: str
    convention: str
    seconds: float
    settings: dict = field(default_factory=dict)

    def state_at(self, sigma: float) -> torch.Tensor:
        """The recorded teacher states [M, ...] at host sigma ``sigma`` (0: the final result)."""
        if sigma == 0:
            return self.final
        gaps = (self.kept_sigmas - sigma).abs() / max(abs(sigma), 1e-30)
        index = int(gaps.argmin())
        if gaps[index] > SAME_SIGMA:
            raise KeyError(f"the teacher kept no state at sigma={sigma:g}; record it with keep=[...]")
        return self.states[index]


def _same(a: float, b: float) -> bool:
    return abs(a - b) <= SAME_SIGMA * max(abs(a), abs(b))


SPACING_LIMIT = 8.0  # |lambda| beyond which extra teacher points are not spread (t = 0.9997)
# extra points are uniform in sigma^(1 / TEACHER_RHO) (VE sigma, exp(-lambda)): Karras' spacing
TEACHER_RHO = 7.0


def teacher_grid(student_grids, steps: int, convention: str, sigma_min: float | None = None) -> torch.Tensor:
    """A grid of about ``steps`` model calls that contains every point of ``student_grids``.

    All student grids must share their first sigma and, if any ends at 0, end at 0. Extra points
    go into each interval in proportion to its length in VE sigma^(1/7) (``TEACHER_RHO``: Karras'
    spacing; at least one per interval), uniformly in it.
    ``sigma_min`` (the model's smallest sigma) extends the grid down to it before the final
    denoise, so the teacher's result is accurate even when a student grid stops early (AYS and
    "simple" grids jump to 0 from well above sigma_min).
    """
    grids = [torch.as_tensor(g, dtype=torch.float64) for g in student_grids]
    if not grids:
        raise ValueError("teacher_grid needs at least one student grid")
    top = float(grids[0][0])
    if any(not _same(float(g[0]), top) for g in grids):
        raise ValueError("student grids must start at the same sigma to share a teacher")
    final_zero = any(float(g[-1]) == 0 for g in grids)
    points = {float(v) for g in grids for v in g if float(v) > 0}
    if sigma_min is not None and 0 < sigma_min < min(points):
        points.add(float(sigma_min))
    points = sorted(points, reverse=True)
    merged = [points[0]]
    for value in points[1:]:
        if not _same(value, merged[-1]):
            merged.append(value)
    positive = torch.tensor(merged, dtype=torch.float64)
    intervals = len(positive) - 1
    budget = steps - (1 if final_zero else 0)
    if intervals > 0:
        # flow t = 1 has lambda = -inf (clamped far out): spacing there would pile every point
        # against t = 1, so points are placed within +-SPACING_LIMIT (student points stay exact)
        lam = half_log_snr(positive, convention).clamp(-SPACING_LIMIT, SPACING_LIMIT)
        # Karras' coordinate, -sigma^(1/rho) in VE sigma = exp(-lambda), increasing along the grid
        coord = -torch.exp(-lam / TEACHER_RHO)
        lengths = coord[1:] - coord[:-1]
        share = lengths / lengths.sum() * max(budget, intervals)
        counts = share.round().clamp(min=1).long()
        pieces = []
        for i in range(intervals):
            fractions = torch.arange(int(counts[i]), dtype=torch.float64) / int(counts[i])
            pieces.append(coord[i] + fractions * lengths[i])
        coord_grid = torch.cat(pieces + [coord[-1:]])
        lam_grid = -TEACHER_RHO * torch.log(-coord_grid)
        grid = sigma_from_half_log_snr(lam_grid, convention)
        # keep the student points bit-exact (the round trip through lambda moves them slightly)
        for value in merged:
            grid[(grid - value).abs().argmin()] = value
    else:
        grid = positive
    if final_zero:
        grid = append_zero(grid)
    return grid


def record_teacher(model, start: torch.Tensor, sigmas, keep=(), *, base: str = "dpmpp_3m",
                   convention: str = "auto", extra_args=None, batch_size: int | None = None,
                   max_state_bytes: int | None = 2 ** 31, dtype=None, hooks: RunHooks | None = None,
                   trace=None) -> TeacherRecord:
    """Run the teacher solver from ``start`` [M, ...] over ``sigmas`` and keep states at ``keep``.

    batch_size: samples per solver run (all at once by default). max_state_bytes: refuse to keep
    more than this many bytes of states (the states live on the CPU). dtype: autocast dtype for
    model calls (None: the model's own). hooks: progress(done, total) after each batch; cancel()
    before each batch, stopping the run when it returns True or raises. trace: a
    ``trajectory.StepCosts`` that sees every state and denoised value of the run.
    """
    from .fit import FitCancelled, autocast_model

    convention = resolve_convention(model, convention)
    hooks = hooks or RunHooks()
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
    keep = [float(s) for s in keep if float(s) > 0]
    keep_idx = []
    for value in keep:
        gaps = (sigmas - value).abs() / value
        index = int(gaps.argmin())
        if gaps[index] > SAME_SIGMA:
            raise ValueError(f"sigma {value:g} is not on the teacher grid; build it with teacher_grid()")
        keep_idx.append(index)
    keep_idx = sorted(set(keep_idx))
    count = start.shape[0]
    state_bytes = len(keep_idx) * start.numel() * 4
    if max_state_bytes is not None and state_bytes > max_state_bytes:
        raise MemoryError(
            f"keeping {len(keep_idx)} teacher states of {count} samples needs {state_bytes / 2**30:.1f} GiB; "
            f"use fewer samples or fewer NFEs per run, or raise max_state_bytes"
        )
    batch_size = batch_size or count
    states = torch.empty((len(keep_idx),) + tuple(start.shape), dtype=torch.float32)
    if trace is not None:
        trace.start(len(sigmas))
    finals = []
    call = plain_model(autocast_model(model, dtype))
    began = time.perf_counter()
    grid = sigmas.to(device=start.device, dtype=start.dtype)
    for first in range(0, count, batch_size):
        if hooks.cancelled():
            raise FitCancelled("teacher recording was cancelled")
        chunk = slice(first, min(first + batch_size, count))
        where = {index: slot for slot, index in enumerate(keep_idx)}

        def capture(info, chunk=chunk, where=where):
            slot = where.get(info["i"])
            if slot is not None:
                states[slot, chunk] = info["x"].detach().float().cpu()
            if trace is not None:
                trace.on_step(chunk, info["i"], float(sigmas[info["i"]]), info["x"], info["denoised"])

        with torch.no_grad():
            out = sample_learned(call, start[chunk], grid, rows_of(extra_args, chunk), capture, True, base=base,
                                 convention=convention)
        if trace is not None:
            trace.on_step(chunk, len(grid) - 1, 0.0, out, None)
        finals.append(out.detach().float().cpu())
        hooks.report(chunk.stop, count)
    return TeacherRecord(
        start=start.detach().float().cpu(),
        final=torch.cat(finals),
        sigmas=sigmas,
        kept_sigmas=sigmas[keep_idx],
        states=states,
        base=base,
        convention=convention,
        seconds=time.perf_counter() - began,
        settings={"base": base, "steps": len(sigmas) - 1},
    )


# A sample is settled when the error of its result, estimated from the last two refinement
# levels, is below the tolerance, relative to the RMS of all results; flips into another mode
# move a result by tens of percent, ordinary discretisation error by a fraction of one.
# ``distill`` sets the tolerance from the error the fitted NFE can reach (``pipeline``); this
# is the default of a teacher run on its own.
TEACHER_TOLERANCE = 0.01
# For a solver of order p the finer of two levels (n and 2n steps) is about 2^p - 1 times closer
# to the exact result than the two are to each other; p = 2 (3x) for every teacher base but
# Euler, a floor below the nominal orders because stiff stretches lower them. Where the check
# level runs ``CHECK_BASE`` under a higher-order teacher, the teacher's level is at least as
# accurate as the check solver's own at its steps would be, so the 3x still bounds it (loosely:
# UniPC bh2 at 32 Karras steps was 7-55x closer than DPM++ 2M at 16 on the benchmark mixtures).
ERROR_ESTIMATE = {"euler": 1.0}
DEFAULT_ERROR_ESTIMATE = 3.0
# the check level's solver: DPM++ 2M stays stable at half the steps under guidance, where the
# higher orders diverge (CFG 7 on the guided benchmark mixture, 16 Karras steps: 2M 0.011-0.025
# median per-sample RMSE, UniPC (bh2) 0.009-0.27 with seeds 20x off, DPM++ 3M 0.019-0.071), so
# the higher orders checked against themselves refined nearly every seed of a fine level that
# was already accurate
CHECK_BASE = "dpmpp_2m"
# the most steps a refinement level may take (only unsettled samples get that far)
MAX_TEACHER_STEPS = 512


@dataclass
class RefinedTeacher(TeacherRecord):
    """A ``TeacherRecord`` checked against itself: each sample run at ``steps`` / 2 and ``steps``,
    and samples whose results' estimated error is above the tolerance run again at twice the
    steps, until it is within it or ``MAX_TEACHER_STEPS`` is reached.

    residuals [M]: per-sample RMSE between each sample's last two levels (an upper bound on the
    error of the result kept, which is the finer one); sample_steps [M]: the steps of the result
    kept; settled [M] bool: the kept result's estimated error (the residual over
    ``ERROR_ESTIMATE``'s factor for the check solver, ``factor``) is within ``tolerance`` (relative
    to ``scale``, the RMS of all results).
    """

    residuals: torch.Tensor = None
    sample_steps: torch.Tensor = None
    settled: torch.Tensor = None
    calls: int = 0
    tolerance: float = TEACHER_TOLERANCE
    scale: float = 1.0
    factor: float = DEFAULT_ERROR_ESTIMATE
    check_base: str = CHECK_BASE

    @property
    def estimated_errors(self) -> torch.Tensor:
        """[M] each result's estimated error, relative to ``scale`` (residual / factor / scale)."""
        return self.residuals / self.factor / self.scale

    @property
    def residual(self) -> float:
        """RMSE over the settled samples between their last two levels (their error bound)."""
        kept = self.residuals[self.settled]
        return float(kept.pow(2).mean().sqrt()) if len(kept) else float("nan")

    def report(self) -> dict:
        """What the provenance and the node's text say about the teacher."""
        estimated = self.estimated_errors[self.settled]
        return {"base": self.base, "check_base": self.check_base, "steps": int(self.sample_steps.min()),
                "max_steps": int(self.sample_steps.max()), "residual": round(self.residual, 6),
                "tolerance": round(self.tolerance, 6),
                "estimated_error": round(float(estimated.max()), 6) if len(estimated) else float("nan"),
                "refined": int((self.sample_steps > self.sample_steps.min()).sum()),
                "excluded": int((~self.settled).sum()), "calls": int(self.calls), "seconds": round(self.seconds, 3)}


class _TeacherLevels:
    """Runs the refined teacher's levels (some of the start states at a step count, on grids
    from sigma_max to sigma_min and 0) and counts their batches for the progress and their calls."""

    def __init__(self, model, start, levels: NoiseLevels, extra_args, batch_size: int, hooks: RunHooks):
        self.model, self.start, self.sigma_min, self.convention = model, start, levels.sigma_min, levels.convention
        self.extra_args, self.batch_size, self.hooks = extra_args, batch_size, hooks
        self.ends = [torch.tensor([levels.sigma_max, 0.0], dtype=torch.float64)]
        self.done, self.total, self.calls_made = 0, 2 * self.batches(start.shape[0]), 0

    def batches(self, samples: int) -> int:
        return -(-samples // self.batch_size)

    def calls(self, samples: int, steps: int) -> int:
        """The model calls of ``samples`` start states at a level of ``steps`` steps."""
        return samples * (len(teacher_grid(self.ends, steps, self.convention, self.sigma_min)) - 1)

    def run(self, indices, steps: int, base: str, trace=None) -> tuple:
        """(the results [len(indices), ...], the level's steps) of ``base`` at ``steps``."""
        grid = teacher_grid(self.ends, steps, self.convention, self.sigma_min)
        before = self.done

        def counted(samples, _):
            self.done = before + self.batches(samples)
            self.hooks.report(self.done, self.total)

        record = record_teacher(self.model, self.start[indices], grid, (), base=base, convention=self.convention,
                                extra_args=rows_of(self.extra_args, indices), batch_size=self.batch_size,
                                hooks=self.hooks.with_progress(counted), trace=trace)
        self.calls_made += len(indices) * (len(grid) - 1)
        return record.final, len(grid) - 1


def refine_teacher(model, start: torch.Tensor, steps: int, *, levels: NoiseLevels, base: str = "unipc_bh2",
                   extra_args=None, batch_size: int | None = None, tolerance=TEACHER_TOLERANCE,
                   max_steps: int = MAX_TEACHER_STEPS, hooks: RunHooks | None = None, plan=None,
                   trace=None) -> RefinedTeacher:
    """An accurate teacher for ``start`` [M, ...] (states at ``levels.sigma_max``): see
    ``RefinedTeacher``.

    steps: the teacher's own step count (at least 4); the check level runs ``steps // 2`` with
    ``CHECK_BASE`` (the teacher's ``base`` where that is Euler or DPM++ 2M: a check needs an
    order no higher than the level it checks), the refinement levels ``base``. Every level's
    grid is ``teacher_grid`` from sigma_max down to ``levels.sigma_min`` and a final 0 (Karras'
    spacing; the sigma table and schedules of ``levels`` are not used). tolerance: the
    estimated error (relative to the results' RMS) above which a
    sample is refined, or a function ``tolerance(final) -> float`` told the first fine results
    [M, ...] (``distill`` measures there what the student can reach).
    hooks: progress(done_batches, total_batches) after every batch (the total
    grows when samples are refined); cancel() before every batch, as in ``record_teacher``;
    plan(sample_calls) with the model calls still to come: both first levels at the start, each
    refinement level when it is decided. trace: a ``trajectory.StepCosts`` fed by the level of
    ``steps`` steps, which every sample runs.
    """
    if steps < 4:
        raise ValueError(f"the teacher needs at least 4 steps; got {steps}")
    levels = levels.resolved(model)
    convention = levels.convention
    count = start.shape[0]
    began = time.perf_counter()
    check_base = base if base in ("euler", "dpmpp_2m") else CHECK_BASE
    factor = ERROR_ESTIMATE.get(check_base, DEFAULT_ERROR_ESTIMATE)
    runs = _TeacherLevels(model, start, levels, extra_args, batch_size or count, hooks or RunHooks())
    everyone = torch.arange(count)
    if plan is not None:
        plan(runs.calls(count, max(2, steps // 2)) + runs.calls(count, steps))
    coarse, _ = runs.run(everyone, max(2, steps // 2), check_base)
    final, used = runs.run(everyone, steps, base, trace)
    sample_steps = torch.full((count,), used, dtype=torch.long)
    scale = float(final.double().pow(2).mean().sqrt()) or 1.0
    residuals = (final.double() - coarse.double()).flatten(1).pow(2).mean(1).sqrt()
    level_steps = steps
    if callable(tolerance):
        tolerance = float(tolerance(final))
    # the kept level's error is about residual / factor; a sample is refined when that exceeds the tolerance
    limit = tolerance * scale * factor
    unsettled = everyone[residuals > limit]
    while len(unsettled) and 2 * level_steps <= max_steps:
        level_steps *= 2
        runs.total += runs.batches(len(unsettled))
        if plan is not None:
            plan(runs.calls(len(unsettled), level_steps))
        finer, used = runs.run(unsettled, level_steps, base)
        residuals[unsettled] = (finer.double() - final[unsettled].double()).flatten(1).pow(2).mean(1).sqrt()
        final[unsettled] = finer
        sample_steps[unsettled] = used
        unsettled = unsettled[residuals[unsettled] > limit]
    settled = torch.ones(count, dtype=torch.bool)
    settled[unsettled] = False
    full_grid = teacher_grid(runs.ends, steps, convention, levels.sigma_min)
    return RefinedTeacher(start=start.detach().float().cpu(), final=final, sigmas=full_grid,
                          kept_sigmas=torch.zeros(0, dtype=torch.float64),
                          states=torch.zeros((0,) + tuple(start.shape)), base=base, convention=convention,
                          seconds=time.perf_counter() - began, settings={"base": base, "steps": steps},
                          residuals=residuals, sample_steps=sample_steps, settled=settled, calls=runs.calls_made,
                          tolerance=tolerance, scale=scale, factor=factor, check_base=check_base)
