"""Fitting the solver family to a teacher: D-ODE, LD3, S4S, S4S-Alt and the default pipeline.

Each method is a subset of ``sample_learned``'s options:

* ``dode``: ``step_scales`` by closed-form least squares, step by step against the teacher's
  states on the same grid (no backpropagation);
* ``ld3``: the grid (``MonotoneGrid``) and decoupled ``eval_offsets``, by backpropagation
  through the unrolled student against the teacher's result, with LD3's soft slack on the
  start noise;
* ``s4s``: ``d_corrections`` (and ``corrector_corrections`` when the corrector is on) on the
  fixed grid;
* ``s4s_alt``: rounds alternating the coefficient and the grid blocks;
* ``auto``: closed-form coefficient corrections first (``fit_corrections``: one run of a few
  training samples, no gradients), then everything jointly by gradient from there; the
  pipeline keeps whichever of the built-in pair, the trajectory pair and the fit does best on
  the validation samples (``s4s`` starts from the same closed form).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field

import torch

from ..learned_samplers import CORRECTION_LIMIT, StepCorrections, half_log_snr, sample_learned, start_noise_scale
from ..learned_samplers.coefficients import base_tables
from ..schedules.grids import grid_coordinate
from ..schedules.solver import FittedSteps
from .grid import MonotoneGrid
from .memory import checkpointed_model
from .prompts import rows_of
from .scoring import capped, no_worse_tail, overall_rmse, per_sample_errors, mean_error
from .settings import FitSettings, RunHooks, SolverSetup

# peak rates for 4 steps at the Distill node's 3-sample batches: larger rates let such small,
# noisy batches walk the grid away from its start before the cosine decay settles it
DEFAULT_LR = {"grid": 0.03, "end": 0.06, "offsets": 0.03, "coefficients": 0.015, "step_scales": 0.015}


class FitCancelled(Exception):
    """The fit was cancelled by its cancel check; nothing was produced."""


class FitDiverged(RuntimeError):
    """Non-finite losses or gradients did not go away after repeated learning-rate back-offs."""


def autocast_model(model, dtype):
    """``model`` with its calls under autocast to ``dtype`` (None: unchanged); outputs in x's dtype."""
    if dtype is None:
        return model

    def call(x, sigma, **kwargs):
        with torch.autocast(device_type=x.device.type, dtype=dtype):
            out = model(x, sigma, **kwargs)
        return out.to(x.dtype)

    return call


# ---------------------------------------------------------------------------------------------
# D-ODE: closed form, one scalar per step.

def fit_step_scales(model, teacher, sigmas, indices, *, base, convention, corrector=False,
                    extra_args=None, max_scale: float = 1.0, max_samples: int | None = None, device=None):
    """Per-step D-ODE scales [N] by least squares against the teacher's states, greedily.

    At step i the student's next state is ``x_base + d_i * direction_i`` (linear in d_i), so
    d_i = <direction, target - x_base> / <direction, direction> over every value of every
    training sample, clamped to +-max_scale; the student then continues from the corrected
    state. ``indices``: the training samples of ``teacher``; all of them go through the model
    at once, so ``max_samples`` caps them where memory is short (the first ones are used).
    device: where the model runs (default: where the teacher's start states are).
    """
    indices = indices[:max_samples] if max_samples else indices
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
    targets = [teacher.state_at(float(s))[indices] for s in sigmas[1:]]
    scales = torch.zeros(len(sigmas) - 1, dtype=torch.float64)

    def solve(i, x_next, direction):
        target = targets[i].to(x_next)
        residual = (target - x_next).double()
        g = direction.double()
        denominator = (g * g).sum()
        if denominator > 0:
            scales[i] = ((g * residual).sum() / denominator).clamp(-max_scale, max_scale)
        return x_next + scales[i].to(x_next.dtype) * direction

    start = teacher.start[indices].to(device or teacher.start.device)
    with torch.no_grad():
        sample_learned(model, start, sigmas.to(start.dtype), rows_of(extra_args, indices), None, True, base=base,
                       convention=convention, corrector=corrector, step_hook=solve)
    return scales


def fit_corrections(model, start, targets, sigmas, *, base, convention, corrector=False, extra_args=None,
                    history: int = 3, cap: float | None = None, ridge: float = 1e-3) -> torch.Tensor:
    """Coefficient corrections [N, history] by weighted least squares, step by step along the
    student's own trajectory (D-ODE's closed form with ``history`` directions per step).

    start: [S, ...] start states; targets: N tensors [S, ...], the teacher's states at
    ``sigmas[1:]``. At step i the student's next state is x_base + sum_k c_ik g_ik with
    g_ik = d_scale_i D_{i-k} (linear in c_i, the newest denoiser outputs), so c_i solves a
    ``history``-unknown least-squares problem over every value of every sample; the student
    then continues from the corrected state. Each sample is weighted 1 / (1 + d / cap), d its
    distance to the target (the "capped" loss's weights): samples the student already sends
    to another mode do not pull the corrections toward them. ``ridge`` (relative to the normal
    matrix's mean diagonal) keeps a direction the samples do not determine at zero; each
    correction is clamped to +-CORRECTION_LIMIT. One run of N model calls over the S samples,
    without gradients.
    """
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
    steps = len(sigmas) - 1
    tables = base_tables(sigmas, base, convention, corrector)
    corrections = torch.zeros(steps, history, dtype=torch.float64)
    outputs = []

    def recording(x, sigma, **kwargs):
        out = model(x, sigma, **kwargs)
        outputs.append(out.detach())
        return out

    def solve(i, x_next, _direction):
        used = range(min(i + 1, history))
        directions = torch.stack([(tables.d_scale[i] * outputs[i - k].double()).flatten(1) for k in used], 2)
        residual = (targets[i].to(x_next).double() - x_next.double()).flatten(1)  # [S, values]
        weights = torch.ones(len(residual), dtype=torch.float64, device=residual.device)
        if cap:
            weights = 1 / (1 + residual.pow(2).mean(1).sqrt() / cap)
        normal = torch.einsum("s,svk,svl->kl", weights, directions, directions)
        normal = normal + ridge * normal.diagonal().mean().clamp(min=1e-30) * torch.eye(len(used), dtype=normal.dtype,
                                                                                      device=normal.device)
        rhs = torch.einsum("s,svk,sv->k", weights, directions, residual)
        solution = torch.linalg.solve(normal, rhs).clamp(-CORRECTION_LIMIT, CORRECTION_LIMIT)
        if not torch.isfinite(solution).all():
            solution = torch.zeros_like(solution)
        corrections[i, :len(used)] = solution.cpu()
        return x_next + (directions @ solution).reshape(x_next.shape).to(x_next.dtype)

    with torch.no_grad():
        sample_learned(recording, start, sigmas.to(start.dtype), extra_args, None, True, base=base,
                       convention=convention, corrector=corrector, step_hook=solve)
    return corrections


# ---------------------------------------------------------------------------------------------
# Gradient fitting.

class StudentParameters(torch.nn.Module):
    """The learnable options of one NFE: grid, decoupled offsets, coefficient corrections."""

    def __init__(self, init: FittedSteps, convention: str, history: int, corrector: bool,
                 sigma_floor: float | None = None):
        super().__init__()
        steps = init.nfe
        self.grid = MonotoneGrid(init.sigmas, convention, sigma_floor)
        self.convention = convention
        self.offset_raw = torch.nn.Parameter(torch.zeros(steps, dtype=torch.float64))
        d_init = torch.zeros(steps, history, dtype=torch.float64)
        if init.d_corrections is not None:
            k = min(history, init.d_corrections.shape[1])
            d_init[:, :k] = init.d_corrections[:, :k]
        self.d_corrections = torch.nn.Parameter(d_init)
        s_init = init.step_scales if init.step_scales is not None else torch.zeros(steps, dtype=torch.float64)
        self.step_scales = torch.nn.Parameter(s_init.clone().double())
        self.corrector_corrections = torch.nn.Parameter(torch.zeros(steps, dtype=torch.float64)) if corrector else None
        if init.eval_offsets is not None:
            raise ValueError("refitting from decoupled offsets is not supported; start from a plain grid")

    def eval_offsets(self, sigmas: torch.Tensor) -> torch.Tensor:
        """Offsets in half-log-SNR, at most half the neighbouring gaps, none at sigma_max and
        none below the last positive sigma (the model's range is never left)."""
        positive = sigmas[:-1] if self.grid.final_zero else sigmas
        lam = half_log_snr(positive.detach(), self.convention)
        gaps = lam[1:] - lam[:-1]
        steps = len(self.offset_raw)
        bound = torch.zeros(steps, dtype=torch.float64)
        for i in range(1, min(steps, len(lam))):
            right = gaps[i] if i < len(gaps) else gaps[i - 1]
            bound[i] = 0.5 * torch.minimum(gaps[i - 1], right)
        offsets = bound * torch.tanh(self.offset_raw)
        last = len(lam) - 1
        if last < steps:  # the last positive sigma may only be evaluated at a larger sigma
            offsets = torch.cat([offsets[:last], offsets[last:last + 1].clamp(max=0), offsets[last + 1:]])
        return offsets

    @torch.no_grad()
    def project(self):
        """Back inside the bounds after an optimiser step: the grid's end, and every correction
        within +-CORRECTION_LIMIT (the bound a file may hold)."""
        self.grid.project()
        for correction in (self.d_corrections, self.step_scales, self.corrector_corrections):
            if correction is not None:
                correction.clamp_(-CORRECTION_LIMIT, CORRECTION_LIMIT)

    def options(self, learn: set) -> tuple:
        """(sigmas [N+1], ``StepCorrections``) of the parts in ``learn``, the rest left out."""
        sigmas = self.grid() if "grid" in learn else self.grid().detach()
        learned = {}
        if "offsets" in learn:
            learned["eval_offsets"] = self.eval_offsets(sigmas)
        if "coefficients" in learn:
            learned["d_corrections"] = self.d_corrections
            learned["corrector_corrections"] = self.corrector_corrections
        if "step_scales" in learn:
            learned["step_scales"] = self.step_scales
        return sigmas, StepCorrections(**learned)

    def snapshot(self, learn: set, method: str, convention: str, sigma_range) -> FittedSteps:
        with torch.no_grad():
            sigmas, corrections = self.options(learn)
            learned = {k: v.detach().clone() for k, v in corrections.present().items()}
        return FittedSteps(sigmas=sigmas.detach().clone(),
                           coordinate=grid_coordinate(sigmas.detach(), sigma_range, convention),
                           method=method, **learned)


# "capped": the scale past which a sample's distance counts less and less, in multiples of the
# floor's median training error
CAP_FACTOR = 3.0


def _loss(out, target, kind, cap=None):
    """l2: mean over samples of each sample's RMS distance (a distance, not its square, so a
    sample the student cannot follow does not drown the others); capped: each distance d counted
    as cap * log(1 + d / cap), so a sample far past ``cap`` (one the base pair already sends to
    another mode) weighs little: the fit aims at the samples it can improve, and the selection
    guards the tail;
    l1: mean absolute error; mse: mean squared error."""
    diff = (out - target).flatten(1)
    if kind == "l1":
        return diff.abs().mean()
    if kind == "mse":
        return diff.pow(2).mean()
    distance = diff.pow(2).mean(1).add(1e-12).sqrt()
    if kind == "capped":
        # the weight of a sample falls as cap / d but never reaches 0, so a fit that has gone wrong
        # on every sample still has a gradient back (Adam does not mind its scale)
        distance = capped(distance, cap)
    return distance.mean()


def rmse(model, teacher, indices, fit: FittedSteps, setup: SolverSetup, batch_size: int = 64, dtype=None):
    """RMSE [float] of the solver ``fit`` to the teacher's results on samples ``indices``, run
    ``batch_size`` samples at a time without gradients."""
    return overall_rmse(per_sample_errors(model, teacher, indices, fit, setup, batch_size, dtype))


@dataclass
class FitLoop:
    """How one gradient fit runs, besides its settings: ``iterations`` steps, drawing its batches
    from ``seed``; hooks: progress(step, total, loss, held_out) after each step, counted from
    ``step_offset`` of ``total_steps`` (default ``iterations``), cancel() before each step;
    ``floor_errors``: the best built-in pair's validation errors, whose tail a snapshot may not
    add flips to; ``loss_cap``: the "capped" loss's distance cap; ``max_rejections`` non-finite
    steps in a row end the fit; the rates fall by a cosine to ``decay_to`` x their peak."""

    iterations: int
    seed: int = 0
    step_offset: int = 0
    total_steps: int | None = None
    hooks: RunHooks = field(default_factory=RunHooks)
    floor_errors: torch.Tensor | None = None
    loss_cap: float | None = None
    max_rejections: int = 10
    decay_to: float = 0.1


class StartSlack:
    """LD3's soft slack: each training sample's start noise may move inside a ball of radius
    slack * d / N^2 (d values per sample, in units of the unit noise) to where the student
    follows the teacher best; slack 0 turns it off. offsets [training samples, ...]."""

    def __init__(self, slack: float, teacher, steps: int, count: int, convention: str):
        self.radius = slack * teacher.start[0].numel() / steps ** 2 if slack else 0.0
        self.unit = start_noise_scale(float(teacher.sigmas[0]), convention)
        self.offsets = torch.zeros((count,) + tuple(teacher.start.shape[1:]))

    def delta(self, part, device) -> torch.Tensor:
        """The offsets of the samples ``part``, a leaf that takes a gradient when the slack is on."""
        return self.offsets[part].to(device).requires_grad_(self.radius > 0)

    def move(self, deltas: list):
        """One normalised gradient step of each sample's offset, projected back into the ball."""
        for part, delta in deltas:
            if self.radius > 0 and delta.grad is not None:
                with torch.no_grad():
                    g = delta.grad.flatten(1)
                    step = self.radius * g / g.norm(dim=1, keepdim=True).clamp(min=1e-30)
                    moved = (delta.detach().flatten(1) - step)
                    moved = moved * (self.radius / moved.norm(dim=1, keepdim=True).clamp(min=self.radius))
                    self.offsets[part] = moved.reshape(delta.shape).to(self.offsets)


def _optimizer(params: StudentParameters, learn: set, settings: FitSettings, steps: int) -> torch.optim.Adam:
    """Adam over the learned groups at their peak rates (``DEFAULT_LR`` x (4 / N)^2, or
    ``settings.lr``): errors compound over more steps, so the rates shrink with N."""
    shrink = min(1.0, (4 / steps) ** 2)
    lr = {**{name: rate * shrink for name, rate in DEFAULT_LR.items()}, **(settings.lr or {})}
    groups = []
    if "grid" in learn:
        groups.append({"params": [params.grid.logits], "lr": lr["grid"]})
        if params.grid.free_end:
            groups.append({"params": [params.grid.end_lambda], "lr": lr["end"]})
    if "offsets" in learn:
        groups.append({"params": [params.offset_raw], "lr": lr["offsets"]})
    if "coefficients" in learn:
        coefficient_params = [params.d_corrections]
        if params.corrector_corrections is not None:
            coefficient_params.append(params.corrector_corrections)
        groups.append({"params": coefficient_params, "lr": lr["coefficients"]})
    if "step_scales" in learn:
        groups.append({"params": [params.step_scales], "lr": lr["step_scales"]})
    optimizer = torch.optim.Adam(groups)
    for group in optimizer.param_groups:
        group["peak_lr"] = group["lr"]
    return optimizer


def _batch_gradient(call, teacher, train, pick, params: StudentParameters, learn: set, setup: SolverSetup,
                    settings: FitSettings, slack: StartSlack, cap) -> tuple:
    """The loss of the training samples ``pick`` (indices into ``train``) and its gradient,
    accumulated over parts of at most micro_batch samples: the memory of a micro_batch-sample
    step, the gradient noise of a batch_size one. Returns (the loss, [(part, its offsets)])."""
    device = setup.device or teacher.start.device
    value, deltas = 0.0, []
    for part in pick.split(settings.micro_batch):
        chunk = train[part]
        start = teacher.start[chunk].to(device)
        target = teacher.final[chunk].to(device)
        delta = slack.delta(part, device)
        sigmas, corrections = params.options(learn)  # built again per part: each backward frees its graph
        out = sample_learned(call, start + slack.unit * delta, sigmas.to(start.dtype), rows_of(setup.extra_args, chunk),
                             None, True, **setup.solver_options(), corrections=corrections)
        part_value = _loss(out, target.to(out.dtype), settings.loss, cap) * (len(part) / len(pick))
        part_value.backward()
        value = value + part_value.detach()
        deltas.append((part, delta))
    return value, deltas


def fit_gradient(model, teacher, init: FittedSteps, learn: set, train, validation, setup: SolverSetup,
                 settings: FitSettings, loop: FitLoop, *, method: str, params: StudentParameters | None = None,
                 keep: set | None = None):
    """Backpropagate through the unrolled student; returns (best FittedSteps, params, log);
    log["best_errors"] holds the best snapshot's per-sample validation errors, so the caller
    need not run it again.

    From ``settings``: batch_size (micro_batch at a time), validate_every, lr, loss, slack
    (``StartSlack``), history, use_checkpoint (a bool here) and inference_batch_size; ``loop``:
    the iterations, draws, progress and guards (``FitLoop``).

    learn: a subset of {"grid", "offsets", "coefficients", "step_scales"}; keep: the options a
    snapshot carries (default ``learn``; S4S-Alt passes every block learned so far). The best
    snapshot by validation score is returned (the mean per-sample error, among snapshots that add
    no flips to ``loop.floor_errors`` when given: ``scoring.no_worse_tail``), and ``params`` are
    left at it (the initial state counts, so the fit never ends worse on the validation samples
    than it started). A rejected (non-finite) step rolls back and halves the peak rates.
    """
    convention, sigma_range = setup.convention, setup.sigma_range
    params = params or StudentParameters(init, convention, settings.history, setup.corrector, sigma_range[0])
    optimizer = _optimizer(params, learn, settings, init.nfe)
    learned = [p for group in optimizer.param_groups for p in group["params"]]
    call = checkpointed_model(model) if settings.use_checkpoint else model
    gen = torch.Generator().manual_seed(loop.seed)
    slack = StartSlack(settings.slack, teacher, init.nfe, len(train), convention)
    keep = learn if keep is None else keep

    def validate():
        # selected on the mean among snapshots that add no flips to the floor's; logged as the RMSE
        snap = params.snapshot(keep, method, convention, sigma_range)
        errors = per_sample_errors(model, teacher, validation, snap, setup, settings.inference_batch_size)
        allowed = loop.floor_errors is None or no_worse_tail(errors, loop.floor_errors)
        return snap, mean_error(errors) if allowed else math.inf, overall_rmse(errors), errors

    best, best_score, first_rmse, best_errors = validate()
    best_state = last_good = copy.deepcopy(params.state_dict())
    log = {"losses": [], "validation": [(loop.step_offset, first_rmse)], "rejected": 0, "best_errors": best_errors}
    rejected_in_a_row = 0  # non-finite steps since the last good one
    for iteration in range(loop.iterations):
        if loop.hooks.cancelled():
            raise FitCancelled("the fit was cancelled")
        # cosine decay to decay_to x the peak: large early moves, then settle into the minimum
        fraction = loop.decay_to + (1 - loop.decay_to) * 0.5 * (1 + math.cos(math.pi * iteration / loop.iterations))
        for group in optimizer.param_groups:
            group["lr"] = group["peak_lr"] * fraction
        pick = torch.randperm(len(train), generator=gen)[:settings.batch_size]
        optimizer.zero_grad(set_to_none=True)
        value, deltas = _batch_gradient(call, teacher, train, pick, params, learn, setup, settings, slack,
                                        loop.loss_cap)
        grads = [p.grad for p in learned if p.grad is not None]
        if not (bool(torch.isfinite(value)) and all(bool(torch.isfinite(g).all()) for g in grads)):
            log["rejected"] += 1
            rejected_in_a_row += 1
            params.load_state_dict(last_good)
            for group in optimizer.param_groups:
                group["peak_lr"] *= 0.5
            if rejected_in_a_row >= loop.max_rejections:
                raise FitDiverged(
                    f"{rejected_in_a_row} steps in a row gave a non-finite loss or gradient, even after "
                    f"halving the learning rate each time; check that the model returns finite values "
                    f"at these sigmas, lower the learning rate, or use the 'dode' method")
            continue
        rejected_in_a_row = 0
        torch.nn.utils.clip_grad_norm_(learned, 1.0)
        optimizer.step()
        params.project()
        last_good = copy.deepcopy(params.state_dict())
        slack.move(deltas)
        log["losses"].append(float(value.detach()))
        if (iteration + 1) % settings.validate_every == 0 or iteration + 1 == loop.iterations:
            snap, score, value_rmse, errors = validate()
            log["validation"].append((loop.step_offset + iteration + 1, value_rmse))
            if score < best_score:
                best, best_score, best_state = snap, score, copy.deepcopy(params.state_dict())
                log["best_errors"] = errors
        if loop.hooks.progress is not None:  # the loss's value is read only for a listener
            loop.hooks.report(loop.step_offset + iteration + 1, loop.total_steps or loop.iterations,
                              float(value.detach()), log["validation"][-1][1])
    params.load_state_dict(best_state)
    return best, params, log


def fit_alternating(model, teacher, init: FittedSteps, train, validation, setup: SolverSetup, settings: FitSettings,
                    loop: FitLoop) -> tuple:
    """S4S-Alt: ``fit_gradient`` in 2 x ``settings.rounds`` blocks that alternate the
    coefficients and the grid (with the offsets where ``settings.decoupled``), each from the
    previous block's best, the iterations split evenly (the last block takes the rest).
    Returns (the last block's best FittedSteps, keeping every block learned so far; the log of
    all blocks). ``loop``: as for ``fit_gradient``; its ``iterations`` are split over the blocks."""
    params = StudentParameters(init, setup.convention, settings.history, setup.corrector, setup.sigma_range[0])
    blocks = [{"coefficients"}, {"grid"} | ({"offsets"} if settings.decoupled else set())]
    log = {"losses": [], "validation": [], "rejected": 0}
    done, learned = 0, set()
    chunk = max(1, loop.iterations // (2 * settings.rounds))
    for round_index in range(2 * settings.rounds):
        block = blocks[round_index % 2]
        learned |= block
        length = chunk if round_index < 2 * settings.rounds - 1 else loop.iterations - done
        part_loop = dataclasses.replace(loop, iterations=length, step_offset=loop.step_offset + done)
        best, params, part = fit_gradient(model, teacher, init, block, train, validation, setup, settings,
                                          part_loop, method="s4s_alt", params=params, keep=set(learned))
        done += length
        log["losses"] += part["losses"]
        log["validation"] += part["validation"]
        log["rejected"] += part["rejected"]
        log["best_errors"] = part["best_errors"]
    return best, log


__all__ = [
    "FitCancelled",
    "FitDiverged",
    "FitLoop",
    "StartSlack",
    "StudentParameters",
    "autocast_model",
    "fit_alternating",
    "fit_gradient",
    "fit_corrections",
    "fit_step_scales",
    "rmse",
    "start_noise_scale",
]


