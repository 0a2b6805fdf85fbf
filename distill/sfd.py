"""SFD (Simple and Fast Distillation, Zhou et al. 2024): fine-tune the network itself, as a LoRA,
so that plain Euler steps on a fixed few-step grid follow the teacher's trajectory.

The learned-solver methods move tens of numbers; below about 4 model calls no grid or
coefficient can make a network trained for many steps land where its teacher lands. SFD
changes the network instead (``lora.LoraAdapters``: the base weights stay frozen):

* the grid sigma_0 > ... > sigma_N (0) is fixed first: the built-in schedule on which Euler
  is best on a few training samples (or one the caller gives);
* the teacher (``teacher_base``, about ``teacher_steps`` calls over the whole range, so several
  sub-steps per student step) runs once over every training and validation noise and keeps
  its states at the grid's points; the trajectories are reused by every iteration;
* per iteration and per student step i: one Euler step of the adapted network from the
  *teacher's* state at sigma_i to sigma_{i+1}, L1 to the teacher's state there (the final
  result for the last step). Steps are independent, so each backward goes through one model
  call;
* every ``validate_every`` iterations the whole N-step Euler run with the adapters is scored on
  the validation noises against the teacher's results; the best snapshot is kept (the
  untrained adapters count, so the result is never worse there than plain Euler on the grid).

Optionally a learned solver (grid and coefficients, ``pipeline.distill``) is fitted on top of
the distilled network against the original network's teacher (``with_solver``).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ..learned_samplers import sample_learned
from ..schedules.grids import grid_coordinate
from ..schedules.solver import MAX_NFE, FittedSteps, LearnedSolver
from ..version import __version__
from .cost import CallCounter
from .discrete import snap_to_discrete
from .fit import FitCancelled, FitDiverged, autocast_model
from .lora import COMFYUI_PREFIX, LoraAdapters, save_lora
from .memory import checkpointed_model, frozen_weights
from .pipeline import candidate_schedules, distill, start_states
from .scoring import builtin_pairs, error_summary, mean_error, overall_rmse, per_sample_errors, ratio_interval
from .settings import NoiseLevels, RunHooks, RunSettings, SolverSetup
from .teacher import record_teacher, refine_teacher, teacher_grid

# where a student step starts in training (``SfdSettings.inputs``)
INPUTS = ("teacher", "student", "unrolled")
# training samples the grid is chosen on (their teacher runs apart, at the teacher's steps)
GRID_PROBES = 8


@dataclass(frozen=True)
class SfdSettings(RunSettings):
    """How ``distill_network`` fits (``RunSettings``' fields with SFD's defaults, and its own);
    ``replace(**changes)`` makes a variant.

    rank: the LoRA rank. iterations: optimiser steps; each puts ``batch_size`` training samples
    (``micro_batch`` at a time) through every student step. samples, validation: training and
    validation noises (the teacher runs over both once). lr: Adam's peak rate for the adapters,
    cosine-decayed to a tenth. grid: "auto" (the built-in schedule where Euler does best), a
    schedule name, or a sequence of N+1 sigmas. teacher_base, teacher_steps: the teacher's
    solver and its calls over the whole range. validate_every: iterations between validation
    runs. inference_batch_size: samples per run without gradients. use_checkpoint: recompute
    the model call in backward ("auto": on a GPU). inputs: where each student step starts:
    "teacher" (SFD's: the teacher's state, each step its own loss and backward through one
    call), "student" (the student's own previous state, detached: the inputs it meets when
    sampling) or "unrolled" (one loss on the final result, backpropagated through all N calls:
    N calls' activations, or their recomputation). with_solver: also fit a learned solver on
    the distilled network (``pipeline.distill`` with ``FitSettings``' defaults, changed by
    ``solver``, a dict of FitSettings fields). dtype: autocast dtype for model calls. seed: noises, adapters, draws.
    """

    KIND: ClassVar[str] = "SFD"

    samples: int = 128
    validation: int = 32
    iterations: int = 400
    batch_size: int = 8
    micro_batch: int = 8
    validate_every: int = 25
    teacher_base: str = "dpmpp_3m"
    rank: int = 8
    lr: float = 2e-3
    grid: Any = "auto"
    inputs: str = "teacher"
    with_solver: bool = False
    solver: dict | None = field(default=None, hash=False)

    def check(self) -> SfdSettings:
        if self.inputs not in INPUTS:
            raise ValueError(f"inputs must be one of {', '.join(INPUTS)}; got {self.inputs!r}")
        super().check()
        if not (isinstance(self.lr, (int, float)) and 0 < self.lr < 1):
            raise ValueError(f"lr must be between 0 and 1 (try 1e-3); got {self.lr!r}")
        return self


@dataclass
class DistilledNetwork:
    """What ``distill_network`` returns.

    adapters: the trained ``LoraAdapters`` (detached from the network; attach them with
    ``adapters.attached()``). nfe, sigmas [N+1]: the Euler grid they were trained for (host
    sigmas), grid_name: its schedule. held_out: per-sample error summary of Euler + adapters
    on the validation noises against the teacher (``scoring.error_summary`` plus "ratio_low",
    "ratio_high": a 90 % interval of its mean over plain Euler's); plain: the same of plain
    Euler on the grid. losses: training loss per iteration (the sum of the steps' L1);
    validation: (iteration, validation RMSE; the snapshot kept is the best by mean per-sample
    error). solver: Euler on the grid as a ``LearnedSolver`` (method "sfd"), with_solver: the
    solver fitted on top, or None.
    provenance: teacher, settings, cost (model calls by kind and phase), timings.
    """

    adapters: LoraAdapters
    nfe: int
    sigmas: torch.Tensor
    grid_name: str
    held_out: dict
    plain: dict
    losses: list
    validation: list
    solver: LearnedSolver
    with_solver: LearnedSolver | None = None
    provenance: dict = field(default_factory=dict)

    def metadata(self) -> dict:
        """What the LoRA file says of itself: the grid, NFE, teacher, held-out errors, the model
        it was fitted to (fingerprint, CFG, resolution, where the host gave them) and the cost."""
        return {"method": "sfd", "nfe": self.nfe, "grid": [float(v) for v in self.sigmas], "grid_name": self.grid_name,
                "sampler": "euler", "held_out": self.held_out, "plain_euler": self.plain,
                "teacher": self.provenance.get("teacher", {}), "model": self.provenance.get("model", {}),
                "rank": self.adapters.rank, "cost": self.provenance.get("cost", {}),
                "package_version": self.provenance.get("package_version")}

    def save(self, lora_path, solver_path=None, prefix: str = COMFYUI_PREFIX) -> tuple:
        """Write the LoRA (``lora.save_lora``, ComfyUI's keys under ``prefix``) and, where
        ``solver_path`` is given, the solver it samples with: ``with_solver`` when fitted, else
        Euler on the grid. Both atomically; returns (lora path, solver path or None)."""
        from ..schedules.files import save_learned_solver

        solver = self.with_solver or self.solver
        solver_written = None
        meta = self.metadata()
        if solver_path is not None:
            solver_written = save_learned_solver(solver, solver_path, {"description": (
                f"the sampler of the SFD LoRA {os.path.basename(os.fspath(lora_path))}")})
            meta["solver_file"] = os.path.basename(solver_written)
        return save_lora(self.adapters, lora_path, {"learned_solvers_sfd": meta}, prefix), solver_written

    def summary(self) -> str:
        """A few lines for a person: what was fitted, and how close it lands to the teacher."""
        grid = ", ".join(f"{float(v):.3g}" for v in self.sigmas)
        lines = [f"SFD LoRA rank {self.adapters.rank} ({self.adapters.parameter_count:,} values on "
                 f"{len(self.adapters.names)} layers), Euler at NFE {self.nfe} on {self.grid_name} [{grid}]",
                 f"held-out error to the teacher: mean {self.held_out['mean']:.4f}, median "
                 f"{self.held_out['median']:.4f}, p95 {self.held_out['p95']:.4f}; plain Euler on this grid "
                 f"{self.plain['mean']:.4f} (ratio {self.held_out['mean'] / max(self.plain['mean'], 1e-30):.2f}, "
                 f"90% CI {self.held_out['ratio_low']:.2f}-{self.held_out['ratio_high']:.2f})"]
        teacher = self.provenance.get("teacher", {})
        if teacher:
            lines.append(f"teacher {teacher.get('base')} at {teacher.get('steps')} steps, residual "
                         f"{teacher.get('residual', float('nan')):.4f}")
        calls = self.provenance.get("cost", {}).get("calls", {})
        if calls:
            lines.append(f"model calls: {calls.get('inference', 0):,} without gradients, {calls.get('gradient', 0):,} "
                         f"with ({calls.get('backward', 0):,} backward), {self.provenance.get('seconds', 0):.0f} s")
        if self.with_solver is not None:
            fit = self.with_solver.fits[self.nfe]
            lines.append(f"learned solver on the distilled network: held-out RMSE {fit.held_out_rmse:.4f} "
                         f"({fit.method}, {fit.base})")
        return "\n".join(lines)


def euler_step(model, x, sigma, sigma_next, extra_args=None, convention="ve"):
    """One Euler step of ``model`` from x at ``sigma`` to ``sigma_next`` (0: the denoised
    result): the student's step, the same formula as ``sample_learned``'s euler base."""
    sigmas = torch.stack([torch.as_tensor(sigma), torch.as_tensor(sigma_next)]).to(device=x.device, dtype=x.dtype)
    return sample_learned(model, x, sigmas, extra_args, None, True, base="euler", convention=convention)


def _choose_grid(call, probes, s: SfdSettings, nfe, levels: NoiseLevels, extra_args, device,
                 hooks: RunHooks) -> tuple:
    """(name, sigmas [N+1]): the grid given, or the built-in one where Euler lands closest to an
    accurate teacher on ``probes`` (start states [P, ...])."""
    if not isinstance(s.grid, str):
        sigmas = torch.as_tensor(s.grid, dtype=torch.float64)
        if sigmas.ndim != 1 or len(sigmas) != nfe + 1 or not (sigmas[1:] < sigmas[:-1]).all():
            raise ValueError(f"grid must be {nfe + 1} decreasing sigmas for NFE {nfe}; got {s.grid!r}")
        return "given", sigmas
    candidates = candidate_schedules(s.grid, levels)
    pairs = builtin_pairs(candidates, nfe, ["euler"], levels)
    if not pairs:
        raise ValueError(f"no schedule gives a valid {nfe}-step grid on this model's range")
    if len(pairs) == 1:
        return pairs[0][1], pairs[0][2].sigmas
    batch_size = s.inference_batch_size
    teacher = refine_teacher(call, probes, s.teacher_steps, levels=levels, base=s.teacher_base, extra_args=extra_args,
                             batch_size=batch_size, hooks=RunHooks(cancel=hooks.cancel))
    setup = SolverSetup(base="euler", convention=levels.convention, corrector=False, sigma_range=levels.sigma_range,
                        extra_args=extra_args, device=device)
    scored = []
    for base, name, fit in pairs:
        errors = per_sample_errors(call, teacher, torch.arange(len(probes)), fit, setup, batch_size)
        scored.append((mean_error(errors), name, fit.sigmas))
    _, name, sigmas = min(scored, key=lambda item: item[0])
    return name, sigmas


def distill_network(model, network: torch.nn.Module, shape, *, levels: NoiseLevels, nfe: int = 2,
                    settings: SfdSettings | None = None, extra_args=None, device="cpu", start=None,
                    hooks: RunHooks | None = None, discrete: bool = False, provenance: dict | None = None,
                    **changes) -> DistilledNetwork:
    """Distil ``network`` (the torch module inside the denoiser ``model(x, sigma, **extra_args)``)
    for Euler at ``nfe`` steps as LoRA adapters; see the module's text.

    shape: one sample's shape. levels: the model's noise levels, as for ``pipeline.distill``
    (its range in host units, convention, a discrete model's sigma table, the host's own
    schedules). start: explicit start states [samples + validation, *shape]. discrete: the
    model looks sigmas up among ``levels.sigma_table``'s (SD1.x, SDXL in ComfyUI), so the grid
    is moved onto them before the teacher runs: the network is trained at the sigmas it samples
    at. hooks: progress(step, total, loss, held_out, seconds_left) after every teacher batch and
    iteration (seconds_left from the iterations' pace, NaN before); cancel() before each, True
    (or an exception it raises) stops with ``FitCancelled``. The network's weights are never
    changed and never get a gradient (``memory.frozen_weights``).
    """
    s = (settings or SfdSettings()).replace(**changes).check()
    _check_steps(nfe)
    levels = levels.check().resolved(model)
    hooks = hooks or RunHooks()
    convention = levels.convention
    use_checkpoint = s.use_checkpoint if s.use_checkpoint != "auto" else torch.device(device).type != "cpu"
    began = time.perf_counter()
    counter = CallCounter(autocast_model(model, s.dtype))
    count = s.samples + s.validation
    if start is None:
        start = start_states(shape, count, levels.sigma_max, convention, s.seed, device)
    elif start.shape[0] != count:
        raise ValueError(f"start has {start.shape[0]} samples; it must hold samples + validation = {count}")
    train, held = torch.arange(s.samples), torch.arange(s.samples, count)
    track = SfdProgress(hooks, -(-count // s.inference_batch_size), s.iterations)
    adapters = LoraAdapters(network, s.rank, seed=s.seed, device=device)
    with frozen_weights(network):
        with counter.phase("floor"):
            grid_name, sigmas = _choose_grid(counter, start[train[:GRID_PROBES]], s, nfe, levels, extra_args, device,
                                             hooks)
        if discrete and levels.sigma_table is not None:
            sigmas = snap_to_discrete(FittedSteps(sigmas=sigmas, coordinate=sigmas), levels.sigma_table,
                                      levels.sigma_range, convention).sigmas
        with counter.phase("teacher"):
            teacher, residual = _teacher(counter, start, held, sigmas, levels, s, extra_args, track)
        targets = [teacher.start] + [teacher.state_at(float(v)) for v in sigmas[1:]]
        setup = SolverSetup(base="euler", convention=convention, corrector=False, sigma_range=levels.sigma_range,
                            extra_args=extra_args, device=device)
        plain_fit = FittedSteps(sigmas=sigmas, coordinate=grid_coordinate(sigmas, setup.sigma_range, convention),
                                base="euler", corrector=False)
        with counter.phase("fit"):
            plain_errors = per_sample_errors(counter, teacher, held, plain_fit, setup, s.inference_batch_size)
            fitted = _train(counter, adapters, targets, sigmas, train, held, teacher, plain_fit, setup, s,
                            use_checkpoint, track)
        best_errors, losses, validation = fitted
    fit = _sfd_fit(plain_fit, grid_name, best_errors, plain_errors, losses, validation)
    provenance = {"teacher": {"base": s.teacher_base, "steps": len(teacher.sigmas) - 1, "residual": residual},
                  "rank": s.rank, "iterations": s.iterations, "samples": s.samples, "validation": s.validation,
                  "batch_size": s.batch_size, "micro_batch": s.micro_batch, "lr": s.lr, "seed": s.seed,
                  "shape": list(shape), "package_version": __version__, **(provenance or {})}
    solver = LearnedSolver(base="euler", convention=convention, corrector=False, method="sfd",
                           sigma_range=setup.sigma_range, fits={nfe: fit}, provenance=provenance)
    combined = None
    if s.with_solver:  # the student is the adapted network, the teacher the original one

        def original(x, sigma, **kwargs):
            with adapters.paused():
                return model(x, sigma, **kwargs)

        with frozen_weights(network), adapters.attached():
            combined = distill(model, shape, levels=levels, nfe=[nfe], extra_args=extra_args, device=device,
                               teacher_model=original, hooks=hooks,
                               provenance={"distilled_network": {"lora_rank": s.rank, "grid": grid_name}},
                               **{"seed": s.seed, "dtype": s.dtype, "inference_batch_size": s.inference_batch_size,
                                  **(s.solver or {})})
    provenance["seconds"] = round(time.perf_counter() - began, 3)
    provenance["cost"] = counter.report()
    return DistilledNetwork(adapters=adapters, nfe=nfe, sigmas=sigmas, grid_name=grid_name, held_out=fit.held_out,
                            plain=error_summary(plain_errors), losses=losses, validation=validation, solver=solver,
                            with_solver=combined, provenance=provenance)


def _check_steps(nfe):
    """A clear error where an SFD fit cannot serve ``nfe`` steps."""
    if isinstance(nfe, bool) or not isinstance(nfe, int) or not 2 <= nfe <= MAX_NFE:
        raise ValueError(f"NFE must be a whole number from 2 to {MAX_NFE} (a solver file holds 2 steps or "
                         f"more); got {nfe!r}")


def _teacher(counter, start, held, sigmas, levels: NoiseLevels, s: SfdSettings, extra_args,
             track: SfdProgress) -> tuple:
    """(the teacher record on ``sigmas``' points, its residual): ``s.teacher_steps`` on every
    start state, checked by the validation noises again at half the steps (the difference
    bounds its error); the teacher grid runs down to the model's ``sigma_min``."""
    convention, batch_size = levels.convention, s.inference_batch_size

    def batches_done(done, _):
        track.report(-(-done // batch_size), float("nan"), float("nan"))

    grid = teacher_grid([sigmas], s.teacher_steps, convention, levels.sigma_min)
    teacher = record_teacher(counter, start, grid, sigmas[1:], base=s.teacher_base, convention=convention,
                             extra_args=extra_args, batch_size=batch_size,
                             hooks=track.hooks.with_progress(batches_done))
    coarse_grid = teacher_grid([sigmas], max(2, s.teacher_steps // 2), convention, levels.sigma_min)
    coarse = record_teacher(counter, start[held], coarse_grid, base=s.teacher_base, convention=convention,
                            extra_args=extra_args, batch_size=batch_size, hooks=RunHooks(cancel=track.hooks.cancel))
    if not torch.isfinite(teacher.final).all():
        raise FloatingPointError("the teacher run produced NaN or inf; check the model at these sigmas "
                                 "(and its dtype), or lower the CFG scale")
    return teacher, float((coarse.final.double() - teacher.final[held].double()).pow(2).mean().sqrt())


def _sfd_fit(plain_fit: FittedSteps, grid_name: str, best_errors, plain_errors, losses, validation) -> FittedSteps:
    """The adapted network's Euler steps as a fit: its validation errors against plain Euler's
    on the same grid (the floor), the loss and validation curves."""
    low, high = ratio_interval(best_errors, plain_errors)
    held_out = {**error_summary(best_errors), "ratio_low": low, "ratio_high": high,
                "closer": float((best_errors < plain_errors).double().mean())}
    return FittedSteps(sigmas=plain_fit.sigmas.clone(), coordinate=plain_fit.coordinate, method="sfd", base="euler",
                       corrector=False, held_out_rmse=float(best_errors.pow(2).mean().sqrt()),
                       base_held_out_rmse=float(plain_errors.pow(2).mean().sqrt()), held_out=held_out,
                       floor={"base": "euler", "schedule": grid_name, **error_summary(plain_errors)}, losses=losses,
                       validation=[(step, value) for step, value in validation])


class SfdProgress:
    """The SFD fit's progress: ``batches`` teacher batches, then ``iterations`` steps, reported
    as progress(step, total, loss, held_out, seconds_left) with the time left from the steps'
    own pace (NaN before the first); cancel() checked before each step."""

    def __init__(self, hooks: RunHooks, batches: int, iterations: int):
        self.hooks = hooks
        self.batches, self.iterations = batches, iterations
        self.fit_began = None

    def report(self, step, loss, held_out):
        if self.hooks.progress is None:
            return
        seconds_left = float("nan")
        if self.fit_began is not None and step > self.batches:
            done = step - self.batches
            seconds_left = (time.perf_counter() - self.fit_began) / done * (self.iterations - done)
        self.hooks.report(step, self.batches + self.iterations, loss, held_out, seconds_left)

    def check_cancel(self):
        if self.hooks.cancelled():
            raise FitCancelled("the SFD fit was cancelled")


def _train(call, adapters: LoraAdapters, targets, sigmas, train, held, teacher, plain_fit, setup, s: SfdSettings,
           use_checkpoint, track: SfdProgress) -> tuple:
    """The gradient steps; returns (the best snapshot's validation errors, losses, validation log)
    and leaves ``adapters`` at that snapshot."""
    device = setup.device
    convention = setup.convention
    student = checkpointed_model(call) if use_checkpoint else call
    optimizer = torch.optim.Adam(adapters.parameters(), lr=s.lr)
    gen = torch.Generator().manual_seed(s.seed + 1)
    steps = len(sigmas) - 1

    def validate():
        with adapters.attached():
            return per_sample_errors(call, teacher, held, plain_fit, setup, s.inference_batch_size)

    # selected on the mean per-sample error, logged as the RMSE (as the solver fits log theirs)
    best_errors = validate()
    best_score, best_state = mean_error(best_errors), adapters.snapshot()
    losses, validation = [], [(0, overall_rmse(best_errors))]
    rejected_in_a_row, backoff = 0, 1.0
    track.fit_began = time.perf_counter()
    for iteration in range(s.iterations):
        track.check_cancel()
        # cosine decay to a tenth of the peak, the peak halved after each rejected step
        for group in optimizer.param_groups:
            group["lr"] = s.lr * backoff * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * iteration / s.iterations)))
        pick = train[torch.randperm(len(train), generator=gen)[:s.batch_size]]
        optimizer.zero_grad(set_to_none=True)
        value = 0.0
        with adapters.attached():
            for part in pick.split(s.micro_batch):
                x = targets[0][part].to(device)
                for i in range(steps):
                    if s.inputs == "teacher":
                        x = targets[i][part].to(device)
                    out = euler_step(student, x, sigmas[i], sigmas[i + 1], setup.extra_args, convention)
                    if s.inputs == "unrolled" and i < steps - 1:  # one loss at the end, through every step
                        x = out
                        continue
                    target = targets[i + 1][part].to(device)
                    loss = (out - target.to(out.dtype)).abs().mean() * (len(part) / len(pick))
                    loss.backward()
                    value += float(loss.detach())
                    x = out.detach()
        grads = [p.grad for p in adapters.parameters() if p.grad is not None]
        if not math.isfinite(value) or not all(bool(torch.isfinite(g).all()) for g in grads):
            # the adapters did not move (no optimiser step): skip it, at half the rate from now on
            rejected_in_a_row += 1
            backoff *= 0.5
            if rejected_in_a_row >= 10:
                raise FitDiverged("10 SFD steps gave a non-finite loss or gradient; check that the model returns "
                                  "finite values at these sigmas, or lower lr")
            continue
        rejected_in_a_row = 0
        torch.nn.utils.clip_grad_norm_(list(adapters.parameters()), 1.0)
        optimizer.step()
        losses.append(value)
        held_out = validation[-1][1]
        if (iteration + 1) % s.validate_every == 0 or iteration + 1 == s.iterations:
            errors = validate()
            held_out = overall_rmse(errors)
            validation.append((iteration + 1, held_out))
            if mean_error(errors) < best_score:
                best_score, best_errors, best_state = mean_error(errors), errors, adapters.snapshot()
        track.report(track.batches + iteration + 1, value, held_out)
    adapters.restore(best_state)
    return best_errors, losses, validation


__all__ = ["DistilledNetwork", "GRID_PROBES", "SfdSettings", "distill_network", "euler_step"]
