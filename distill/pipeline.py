"""``distill``: an accurate teacher once, as accurate as the fitted NFEs need (which also reads a
grid off its own trajectories, ``trajectory``), then per NFE: score the built-in pairs and the
trajectory grid's, start from the best, fit with the chosen method, and keep the fit only where
it beats the best built-in pair and diverges on no more fresh seeds than that pair."""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from ..version import __version__
from ..learned_samplers import BASE_SOLVERS
from ..schedules import builtin_schedules, uniform
from .cost import CallCounter, TimeLeft, fit_calls, planned_calls
from .fit import (CAP_FACTOR, FitLoop, autocast_model, fit_alternating, fit_corrections, fit_gradient, fit_step_scales,
                  start_noise_scale)
from .scoring import (builtin_pairs, diverged, error_summary, mean_error, no_worse_tail, overall_rmse,
                      per_sample_errors, ratio_interval, score_pairs, typical_error)
from .prompts import PerSample, PromptSplit, assign_prompts, route_prompts, rows_of, split_prompts
from .settings import FitSettings, NoiseLevels, RunHooks, SolverSetup
from ..schedules.solver import MAX_NFE, FittedSteps, LearnedSolver
from .teacher import record_teacher, refine_teacher, teacher_grid
from .trajectory import StepCosts

def start_states(shape, count: int, sigma_max: float, convention: str, seed: int, device="cpu",
                 dtype=torch.float32) -> torch.Tensor:
    """Seeded start states [count, *shape]: unit noise times ``start_noise_scale``."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn((count,) + tuple(shape), generator=gen, dtype=torch.float64)
    return (start_noise_scale(sigma_max, convention) * noise).to(device=device, dtype=dtype)


# the floor's rounds: every pair on FLOOR_PROBES[0] training samples, the best FLOOR_SHORTLIST
# built-in pairs (and 2 trajectory ones) on FLOOR_PROBES[1] more, the best FLOOR_FINALISTS of
# those (and 1) on every validation sample: most pairs are far off and a few samples show it,
# the close ones need many
FLOOR_PROBES = (3, 6)
FLOOR_SHORTLIST = 12
FLOOR_FINALISTS = 3
# training samples whose teacher trajectories are kept for the closed-form first coefficients
# (at most ``FitSettings.dode_samples``: they run as one batch)
CORRECTION_SAMPLES = 16
# the schedule name of the grid read off the teacher's trajectories (``trajectory.StepCosts``)
TRAJECTORY = "trajectory"
# teacher_tolerance "auto": the teacher's estimated error may be this share of the median error
# of the best built-in pair at the largest NFE fitted (on the floor's first probe seeds, against
# the teacher's first results), within TEACHER_TOLERANCE_RANGE (relative to the results' RMS).
# A fitted solver lands 0.1-0.7x that pair's error, so the teacher's estimate stays below the
# best a fit reaches, and its true error is several times lower still (the estimate is checked
# with DPM++ 2M at half the steps: ``teacher.CHECK_BASE``); a seed in another mode (tens of
# percent) is refined at any NFE. The range: never below the fixed 1 % of earlier versions (the
# check cannot tell a seed from its own error much below that: DPM++ 2M at 16 steps is 1-3 % off
# on the benchmark mixtures, and at 0.5 % the hard mixture refined 45 of 128 seeds, none in
# another mode), never above 2 % (a seed that both levels put near another mode can differ
# between them by only 6-15 %: at 5 % the guided mixture at CFG 7 left one such seed unrefined)
TEACHER_SHARE = 0.1
TEACHER_TOLERANCE_RANGE = (0.01, 0.02)
# fresh seeds every fitted solver also runs on before it is taken, to screen for a result that
# diverges: no teacher is needed, only the result's size (above DIVERGED_FACTOR x the largest
# teacher result's RMS). Under CFG 7 a fit (UniPC + AYS, NFE 8, guided benchmark mixture) sent
# 1 of 128 held-out seeds to an RMS of 14 that none of its 64 validation seeds showed
SCREEN_SAMPLES = 128
SCREEN_SEED = 20_000
DIVERGED_FACTOR = 1.5


@dataclass
class FirstResults:
    """The teacher's results before refinement: start [M, ...] and final [M, ...], what
    ``scoring.per_sample_errors`` reads of a teacher."""

    start: torch.Tensor
    final: torch.Tensor


def candidate_schedules(init, levels: NoiseLevels) -> dict:
    """The schedules a fit may start from: name -> (nfe -> sigmas).

    init "auto": every built-in (``builtin_schedules``) on ``levels`` (resolved: "ve" or
    "flow") plus its ``schedules`` (a host's own, e.g. ComfyUI's schedulers for the loaded
    model); a built-in name: that one; a dict nfe -> sigmas or a callable nfe -> sigmas: that
    grid ("given").
    """
    # the host's own first: where two schedules give the same grid, the name the user knows is kept
    known = dict(levels.schedules or {})
    low, high = levels.sigma_range
    for name, make in builtin_schedules(low, high, levels.convention, levels.sigma_table).items():
        known.setdefault(name, make)
    known["uniform"] = lambda n: uniform(n, low, high, final_zero=True)
    if init == "auto":
        return {name: make for name, make in known.items() if name != "uniform"}
    if callable(init):
        return {"given": init}
    if isinstance(init, dict):
        return {"given": lambda n: init[n]}
    if init in known:
        return {init: known[init]}
    raise ValueError(f"unknown initial grid {init!r}; use 'auto', one of {', '.join(sorted(known))}, "
                     f"a dict or a callable")


def distill(model, shape, *, levels: NoiseLevels, nfe=(4,), settings: FitSettings | None = None, extra_args=None,
            device="cpu", start=None, provenance: dict | None = None, hooks: RunHooks | None = None,
            teacher_model=None, prompts=None, **changes) -> LearnedSolver:
    """Fit a few-step solver to ``model`` (a k-diffusion denoiser ``model(x, sigma, **extra_args)``).

    shape: one sample's shape, e.g. (4, 64, 64). levels: the model's noise levels
    (``NoiseLevels``: its range in host units, convention, a discrete model's sigma table and
    the host's own schedules, scored with the built-ins); grids start at sigma_max and their
    last positive sigma is kept. nfe: one or more step counts served by one teacher run.
    settings: how to fit (``FitSettings``; its fields may also be given as keywords,
    ``method="ld3", iterations=100``, which change ``settings``). start: explicit start states
    [samples + validation, *shape] instead of seeded noise. provenance: extra entries for the
    result's provenance (e.g. the model's family and CFG). teacher_model: the denoiser the
    teacher runs (default ``model``): a solver fitted on a distilled network (``sfd``) follows
    the original network's teacher.
    prompts: several conditionings in one fit: a count P (``model`` then takes a keyword
    ``prompt``, [B] indices 0..P-1) or a list of extra_args dicts, one per prompt. Training
    seeds go round the prompts at even positions; validation seeds round every prompt, so the
    others are held out of training (``prompts.split_prompts``); each fit reports its mean
    error on both halves (``held_out`` and ``floor``: "training_prompts", "held_out_prompts").
    hooks: progress(step, total, loss, held_out, seconds_left) after every teacher batch (loss and
    held_out NaN) and every iteration, ``total`` counting both; seconds_left: the estimate of
    ``cost.TimeLeft`` (NaN until a model call has been timed); cancel() before every iteration
    and teacher batch: True (or an exception it raises) stops the fit.

    Every model call is counted (``cost.CallCounter``): the provenance's "cost" holds the
    sample-calls by kind and phase with each phase's seconds, and each fit's ``model_calls``
    what its NFE cost after the teacher.

    Per NFE: every base solver x schedule (only ``settings.base`` / ``init_sigmas`` where they are
    not "auto"; with "auto" also the grid read off the teacher's trajectories,
    ``trajectory.StepCosts``) is scored on the training samples against the teacher; the fit
    starts from the best pair (and a second fit from the pair closest on typical samples, where
    that is another: ``_floor``; the one closer on typical validation samples is kept), and on
    the validation samples (by ``scoring.mean_error``) the
    result is never worse than the best built-in pair (the floor): where neither the fit nor the
    trajectory pair beats it, the result *is* the floor (method "builtin", no corrections).
    A fit is also run on ``SCREEN_SAMPLES`` fresh seeds and turned away where more of its
    results diverge there than the pair's (``scoring.diverged``). The teacher's tolerance
    ("auto") is set by what the largest NFE can reach (``teacher_tolerance``): the floor's first
    round at that NFE runs on the teacher's first results, before any seed is refined.
    Where coefficients are learned ("auto", "s4s"), the gradient steps start from closed-form
    corrections (``fit.fit_corrections``) against the kept teacher trajectories of
    ``CORRECTION_SAMPLES`` training samples (``trajectory.StepCosts.states_at``).
    """
    s = (settings or FitSettings()).replace(**changes).check()
    nfes = _checked_nfes(nfe)
    levels = levels.check().resolved(model)
    if s.use_checkpoint == "auto":
        has_weights = isinstance(model, torch.nn.Module) and any(True for _ in model.parameters())
        s = s.replace(use_checkpoint=has_weights or torch.device(device).type != "cpu")
    model, split = _with_prompts(model, prompts)
    if teacher_model is not None:  # the teacher runs each seed with its prompt too
        teacher_model, _ = _with_prompts(teacher_model, prompts)
    began = time.perf_counter()
    count = s.samples + s.validation
    if start is None:
        start = start_states(shape, count, levels.sigma_max, levels.convention, s.seed, device)
    elif start.shape[0] != count:
        raise ValueError(f"start has {start.shape[0]} samples; it must hold samples + validation = {count}")
    run = _new_run(model, s, levels, split, extra_args, device, hooks or RunHooks())
    candidates_by_name = candidate_schedules(s.init_sigmas, levels)
    pairs_by_nfe = {n: builtin_pairs(candidates_by_name, n, run.bases, levels) for n in nfes}
    _plan(run, pairs_by_nfe)
    first_round, early_calls = _teach(run, start, pairs_by_nfe[nfes[-1]], teacher_model)
    _prepare_fits(run, shape, start)
    fits = {}
    for index, n in enumerate(nfes):
        fits[n] = _fit_nfe(run, n, pairs_by_nfe[n], first_round if n == nfes[-1] else None, index)
        if n == nfes[-1] and early_calls:  # the largest NFE's first floor round ran during the teacher
            fits[n].model_calls = {kind: calls + early_calls[kind] for kind, calls in fits[n].model_calls.items()}
    first = fits[nfes[0]]
    return LearnedSolver(base=first.base, convention=run.convention, corrector=first.corrector, method=s.method,
                         sigma_range=run.sigma_range, fits=fits, provenance=_provenance(run, shape, began, provenance))


@dataclass
class ScoredPair:
    """A base solver on a grid with its per-sample errors to the teacher: a built-in pair, a
    trajectory pair, a fit's start or the fit itself. errors [V]: on the validation seeds;
    train_errors: on the training seeds it was ranked on (empty for a fit)."""

    base: str
    schedule: str
    fit: FittedSteps
    errors: torch.Tensor
    setup: SolverSetup
    train_errors: torch.Tensor


@dataclass
class FitRun:
    """What the steps of one ``distill`` share: the counted model and its settings, the teacher
    and the seeds it settled, the progress count and the time-left plan."""

    counter: CallCounter
    settings: FitSettings
    levels: NoiseLevels  # its convention resolved
    shared: SolverSetup  # its extra_args hold one row per start state where there are prompts
    bases: list
    time_left: TimeLeft
    hooks: RunHooks
    step_costs: StepCosts | None
    kept: int  # training seeds whose teacher trajectories are kept for the closed form
    split: PromptSplit | None
    assignment: torch.Tensor | None
    teacher: Any = None
    train: torch.Tensor | None = None
    held: torch.Tensor | None = None
    screen: torch.Tensor | None = None
    screen_args: dict | None = None
    largest_result: float = 0.0
    teacher_batches: int = 0
    iterations: int = 0  # every fit's iterations, as the progress counts them
    total: int = 0  # progress steps: teacher batches, then every fit's iterations
    steps_done: int = 0

    @property
    def convention(self) -> str:
        return self.levels.convention

    @property
    def sigma_range(self) -> tuple:
        return self.levels.sigma_range

    @property
    def own_grids(self) -> bool:
        """Whether the grid read off the teacher's trajectories is scored as a start."""
        return self.settings.init_sigmas == "auto"  # its trajectories are then always recorded

    def report(self, step, total, loss, held_out):
        if self.hooks.progress is not None:
            self.hooks.report(step, total, loss, held_out, self.time_left.seconds())


def _provenance(run: FitRun, shape, began: float, extra: dict | None) -> dict:
    """What the result records of how it was fitted (never the prompts, only their counts)."""
    s = run.settings
    return {"teacher": run.teacher.report(), "samples": s.samples, "validation": s.validation, "seed": s.seed,
            "iterations": s.iterations, "loss": s.loss, "slack": s.slack, "shape": list(shape),
            "seconds": round(time.perf_counter() - began, 3), "package_version": __version__,
            "cost": {**run.counter.report(), "planned": dict(run.time_left.planned)},
            **({"prompts": run.split.report()} if run.split else {}), **(extra or {})}


def _checked_nfes(nfe) -> list:
    """The step counts asked for, sorted, once each; a clear error where a fit cannot serve them."""
    nfes = sorted({int(n) for n in ([nfe] if isinstance(nfe, int) else nfe)})
    if not nfes or nfes[0] < 2:
        raise ValueError(f"NFE must be at least 2 for a learned solver; got {nfes}")
    if nfes[-1] > MAX_NFE:
        raise ValueError(f"NFE must be at most {MAX_NFE} for a learned solver (a few-step sampler); got {nfes}")
    return nfes


def _new_run(model, s: FitSettings, levels: NoiseLevels, split, extra_args, device, hooks: RunHooks) -> FitRun:
    """The run's shared state before the teacher: the counted model, the bases, the prompts'
    per-sample keyword and the trajectory recorder."""
    counter = CallCounter(autocast_model(model, s.dtype))
    bases = list(BASE_SOLVERS) if s.base == "auto" else [s.base]
    count = s.samples + s.validation
    assignment = assign_prompts(split, s.samples, s.validation) if split else None
    extra_args = {**(extra_args or {}), "prompt": PerSample(assignment)} if split else extra_args
    shared = SolverSetup(base=bases[0], convention=levels.convention, corrector=bases[0].startswith("unipc"),
                         sigma_range=levels.sigma_range, extra_args=extra_args, device=device)
    # with init_sigmas "auto" the teacher's trajectories also give a start: its grid is scored
    # with each base as one more candidate (never as the floor); where the fit learns
    # coefficients, the trajectories of a few training samples are kept for their first guess
    fits_coefficients = s.method in ("auto", "s4s")
    trajectories = s.init_sigmas == "auto" or fits_coefficients
    # they go through the model at once: no more than a closed form may put there (dode_samples)
    kept = min(CORRECTION_SAMPLES, s.samples, s.dode_samples or CORRECTION_SAMPLES) if fits_coefficients else 0
    step_costs = (StepCosts(torch.arange(count) < s.samples, keep=kept, convention=levels.convention)
                  if trajectories else None)
    return FitRun(counter=counter, settings=s, levels=levels, shared=shared, bases=bases,
                  time_left=TimeLeft(counter, checkpoint=bool(s.use_checkpoint)), hooks=hooks, step_costs=step_costs,
                  kept=kept, split=split, assignment=assignment)


def _plan(run: FitRun, pairs_by_nfe: dict):
    """Every NFE's planned calls after the teacher into the time-left estimate, and every fit's
    iterations, the progress count's second part (the teacher's progress tells the first;
    ``_prepare_fits`` adds them up)."""
    s = run.settings
    for n, pairs in pairs_by_nfe.items():
        if not pairs:
            raise ValueError(f"no schedule gives a valid {n}-step grid on this model's range")
        plan = planned_calls(s, nfe=n, pairs=len(pairs), own_pairs=len(run.bases) if run.own_grids else 0,
                             corrections=run.kept, probes=FLOOR_PROBES, shortlist=FLOOR_SHORTLIST,
                             finalists=FLOOR_FINALISTS, screen=SCREEN_SAMPLES)
        for kind, calls in plan.items():
            run.time_left.plan(kind, calls)
    run.iterations = len(pairs_by_nfe) * (1 if s.method == "dode" else s.iterations)


def _teach(run: FitRun, start: torch.Tensor, largest_pairs: list, teacher_model) -> tuple:
    """The refined teacher into ``run.teacher``; returns (the largest NFE's first floor round, or
    None where a probe seed was refined or left out, and that round's calls, or None).

    With teacher_tolerance "auto" the first floor round runs on the teacher's first results,
    before any seed is refined, and sets the tolerance (``teacher_tolerance``)."""
    s, counter = run.settings, run.counter
    teacher_call = None if teacher_model is None else autocast_model(teacher_model, s.dtype)
    student_call = counter.model
    probes = torch.arange(min(FLOOR_PROBES[0], s.samples))
    early = {}
    tolerance = s.teacher_tolerance

    def teacher_progress(done, total):
        run.teacher_batches = total
        run.report(done, total + run.iterations, float("nan"), float("nan"))

    if tolerance == "auto":
        def tolerance(final):
            first = FirstResults(start=start, final=final)
            mark = counter.report()["calls"]
            with counter.phase("floor"), counter.using(student_call if teacher_call is not None else None):
                early["first_round"] = score_pairs(counter, first, probes, largest_pairs, run.shared,
                                                   s.inference_batch_size)
            early["calls"] = counter.since(mark)  # the largest NFE's fit's calls
            return teacher_tolerance(early["first_round"], final)

    with counter.phase("teacher"), counter.using(teacher_call):
        teacher = refine_teacher(counter, start, s.teacher_steps, levels=run.levels, base=s.teacher_base,
                                 extra_args=run.shared.extra_args, batch_size=s.inference_batch_size,
                                 tolerance=tolerance, hooks=run.hooks.with_progress(teacher_progress),
                                 plan=lambda calls: run.time_left.plan("inference", calls), trace=run.step_costs)
    if not torch.isfinite(teacher.final).all():
        raise FloatingPointError("the teacher run produced NaN or inf; check the model at these sigmas "
                                 "(and its dtype), or lower the CFG scale")
    run.teacher = teacher
    # samples the teacher could not settle even at its finest level are left out of the fit
    order = torch.arange(s.samples + s.validation)
    run.train = order[:s.samples][teacher.settled[:s.samples]]
    run.held = order[s.samples:][teacher.settled[s.samples:]]
    if len(run.train) == 0 or len(run.held) == 0:
        raise FloatingPointError(f"the teacher did not settle (its results still moved at {teacher.report()['max_steps']} "
                                 f"steps) on every training or validation sample; check the model, or lower the CFG")
    # the first floor round stands where its probe seeds are still the first training seeds, unrefined
    unrefined = bool((teacher.sample_steps[probes] == teacher.sample_steps.min()).all())
    unchanged = unrefined and torch.equal(run.train[:len(probes)], probes)
    return (early.get("first_round") if unchanged else None), early.get("calls")


def _prepare_fits(run: FitRun, shape, start: torch.Tensor):
    """The divergence screen's fresh seeds (round every prompt, as the validation seeds go), the
    size a result is judged diverged by, and the progress count after the teacher."""
    s = run.settings
    run.screen = start_states(shape, SCREEN_SAMPLES, run.sigma_range[1], run.convention, s.seed + SCREEN_SEED,
                              run.shared.device, start.dtype)
    run.screen_args = ({**run.shared.extra_args, "prompt": PerSample(assign_prompts(run.split, 0, SCREEN_SAMPLES))}
                       if run.split else run.shared.extra_args)
    teacher = run.teacher
    run.largest_result = float(teacher.final[teacher.settled].double().flatten(1).pow(2).mean(1).sqrt().max())
    run.total = run.teacher_batches + run.iterations
    run.steps_done = run.teacher_batches


def _fit_nfe(run: FitRun, n: int, pairs: list, first_round, index: int) -> FittedSteps:
    """One NFE: the floor and the starts, a fit from each, the choice among the fit, the
    trajectory pair and the floor, and what the result records of it."""
    s, counter = run.settings, run.counter
    fit_began = time.perf_counter()
    calls_before = counter.report()["calls"]
    own = (builtin_pairs({TRAJECTORY: run.step_costs.grid}, n, run.bases, run.levels)
           if run.own_grids else [])
    with counter.phase("floor"):
        floor, starts = _floor(counter, run.teacher, run.train, run.held, pairs, own, run.shared,
                               s.inference_batch_size, first_round)
    floor.fit.method = "builtin"
    if s.method == "dode":  # a closed form from one grid: its start is the best by mean
        starts = starts[:1]
    if len(starts) > 1:  # the second fit's steps and calls join the progress and the plan now that they are known
        run.total += s.iterations
        for kind, calls in fit_calls(s, nfe=n, validation=len(run.held), corrections=run.kept).items():
            run.time_left.plan(kind, calls)
    with counter.phase("fit"):
        fitted = []
        for start in starts:
            fitted.append((start, *_fit_from(run, n, start, floor.errors)))
            run.steps_done += 0 if s.method == "dode" else s.iterations
    start, best, log = _kept_fit(run, fitted, floor.errors)
    chosen, diverged_text = _choose(run, start, best, log, floor, starts)
    if s.method == "dode":
        run.report(run.teacher_batches + index + 1, run.total, float("nan"), overall_rmse(log["best_errors"]))
    result = chosen.fit
    _describe(result, chosen, floor, start, fitted, diverged_text)
    if run.split and run.split.held_out:
        result.held_out.update(_by_prompt_half(chosen.errors, run.assignment[run.held], run.split))
        result.floor.update(_by_prompt_half(floor.errors, run.assignment[run.held], run.split))
    result.fit_seconds = time.perf_counter() - fit_began
    result.losses, result.validation, result.rejected_steps = log["losses"], log["validation"], log["rejected"]
    result.model_calls = counter.since(calls_before)
    return result


def _fit_from(run: FitRun, n: int, start: ScoredPair, floor_errors: torch.Tensor) -> tuple:
    """The method's fit from one start: (its best FittedSteps, its log)."""
    s = run.settings
    if s.method == "dode":
        return _fit_dode(run, start), {"losses": [], "validation": [], "rejected": 0}
    plain = FittedSteps(sigmas=start.fit.sigmas, coordinate=start.fit.coordinate)
    cap = CAP_FACTOR * float(start.train_errors.median()) if len(start.train_errors) else None
    loop = FitLoop(iterations=s.iterations, seed=s.seed + n, step_offset=run.steps_done, total_steps=run.total,
                   hooks=run.hooks.with_progress(run.report), floor_errors=floor_errors, loss_cap=cap)
    if s.method == "s4s_alt":  # each block starts from the previous block's best
        return fit_alternating(run.counter, run.teacher, plain, run.train, run.held, start.setup, s, loop)
    offsets = {"offsets"} if s.decoupled else set()
    learn = {"auto": {"grid", "coefficients", "step_scales"} | offsets, "ld3": {"grid"} | offsets,
             "s4s": {"coefficients"}}[s.method]
    if s.method in ("auto", "s4s"):  # the gradient steps start from the closed-form corrections
        plain = _first_corrections(run.counter, run.teacher, run.step_costs, plain, start.setup, s, cap)
    best, _, log = fit_gradient(run.counter, run.teacher, plain, learn, run.train, run.held, start.setup, s, loop,
                                method=s.method)
    return best, log


def _fit_dode(run: FitRun, start: ScoredPair) -> FittedSteps:
    """D-ODE: per-step scales in closed form against a teacher run that keeps its states on the start's grid."""
    s = run.settings
    rows = run.train[:s.dode_samples] if s.dode_samples else run.train
    extra_args = rows_of(run.shared.extra_args, rows)
    states = _teacher_states(run.counter, run.teacher, rows, start.fit.sigmas, s, run.convention, run.sigma_range[0],
                             extra_args, run.shared.device)
    scales = fit_step_scales(run.counter, states, start.fit.sigmas, torch.arange(states.start.shape[0]),
                             base=start.base, convention=run.convention, corrector=start.setup.corrector,
                             extra_args=extra_args, device=run.shared.device)
    return FittedSteps(sigmas=start.fit.sigmas, coordinate=start.fit.coordinate, step_scales=scales, method="dode")


def _kept_fit(run: FitRun, fitted: list, floor_errors: torch.Tensor) -> tuple:
    """Of the fits from one or two starts [(start, best, log)], the one that keeps typical
    samples closer (the tail is guarded after); the first where they tie."""
    for start, best, log in fitted:
        if log.get("best_errors") is None:  # the gradient fits measured their best snapshot already
            with run.counter.phase("selection"):
                log["best_errors"] = per_sample_errors(run.counter, run.teacher, run.held, best, start.setup,
                                                       run.settings.inference_batch_size)
    return min(fitted, key=lambda f: typical_error(f[2]["best_errors"], floor_errors))


def _choose(run: FitRun, start: ScoredPair, best: FittedSteps, log: dict, floor: ScoredPair, starts: list) -> tuple:
    """(the result, as a ScoredPair, and a note where the fit was turned away for diverging, else
    None): the fit where it adds no flips to the floor's and diverges on no more screened seeds
    than the floor, the trajectory pair where it adds no flips, or the floor; the lowest mean
    error among those, ties keeping the built-in pair."""
    s, errors = run.settings, log["best_errors"]
    with run.counter.phase("selection"):  # fresh seeds, only the results' size: no teacher run
        def on_screen(fitted, setup):
            setup = dataclasses.replace(setup, extra_args=run.screen_args)
            return int(diverged(run.counter, run.screen, fitted, setup, DIVERGED_FACTOR * run.largest_result,
                                s.inference_batch_size).sum())

        diverging = on_screen(best, start.setup)
        # the pair may diverge there too (multistep samplers do under strong guidance)
        floor_diverging = on_screen(floor.fit, floor.setup) if diverging else 0
    adds_divergence = diverging > floor_diverging
    fitted_score = mean_error(errors) if no_worse_tail(errors, floor.errors) and not adds_divergence else math.inf
    candidates = [(mean_error(floor.errors), floor)]
    for pair in starts:
        if pair.schedule == TRAJECTORY:  # the teacher's own grid with the plain base: kept where it adds no flips
            pair.fit.method = "trajectory"
            allowed = no_worse_tail(pair.errors, floor.errors)
            candidates.append((mean_error(pair.errors) if allowed else math.inf, pair))
    learned = ScoredPair(start.base, start.schedule, best, errors, start.setup, torch.zeros(0))
    candidates.append((fitted_score, learned))
    _, chosen = min(candidates, key=lambda c: c[0])  # ties keep the built-in pair
    note = f"{diverging} of {SCREEN_SAMPLES} (the pair on {floor_diverging})" if adds_divergence else None
    return chosen, note


def _describe(result: FittedSteps, chosen: ScoredPair, floor: ScoredPair, start: ScoredPair, fitted: list,
              diverged_text: str | None):
    """What ``result`` records: its base, its validation errors against the floor's (and per
    half of the prompts), the floor, the start, a start also fitted, a fit turned away."""
    errors = chosen.errors
    result.base, result.corrector = chosen.setup.base, chosen.setup.corrector
    result.held_out_rmse = overall_rmse(errors)
    result.base_held_out_rmse = overall_rmse(floor.errors)
    low, high = ratio_interval(errors, floor.errors)
    result.held_out = {**error_summary(errors), "closer": float((errors < floor.errors).double().mean()),
                       "ratio_low": low, "ratio_high": high}
    result.floor = {"base": floor.base, "schedule": floor.schedule, **error_summary(floor.errors)}
    result.start = {"base": start.base, "schedule": start.schedule}
    others = [f"{other.base} + {other.schedule}" for other, _, _ in fitted if other is not start]
    if others:  # fitted from there too, and not kept
        result.start["also_fitted"] = others[0]
    if diverged_text:
        result.start["diverged"] = diverged_text


def _with_prompts(model, prompts) -> tuple:
    """(the model, its ``PromptSplit`` or None) for ``distill``'s ``prompts``: a list of extra_args
    dicts becomes one model that takes ``prompt`` (each prompt's own entries over the shared
    extra_args)."""
    if prompts is None:
        return model, None
    if isinstance(prompts, (list, tuple)):
        if not all(isinstance(p, dict) for p in prompts):
            raise ValueError("prompts must be a count or a list of extra_args dicts, one per prompt")
        routed = route_prompts([lambda x, sigma, _args=args, **kw: model(x, sigma, **{**kw, **_args})
                                for args in prompts])
        return routed, split_prompts(len(prompts))
    if isinstance(prompts, bool) or not isinstance(prompts, int) or prompts < 1:
        raise ValueError(f"prompts must be a positive count or a list of extra_args dicts; got {prompts!r}")
    return model, split_prompts(prompts)


def _by_prompt_half(errors: torch.Tensor, prompt_of: torch.Tensor, split: PromptSplit) -> dict:
    """The mean per-sample error on the validation seeds of the training prompts and on those of
    the held-out prompts (``errors`` and ``prompt_of`` [V], one per validation seed)."""
    trained = torch.isin(prompt_of, torch.tensor(split.training))
    return {half: mean_error(errors[seeds]) if seeds.any() else float("nan")  # NaN: no seed left on that half
            for half, seeds in (("training_prompts", trained), ("held_out_prompts", ~trained))}


def teacher_tolerance(first_round, final: torch.Tensor) -> float:
    """The teacher's tolerance (relative to the RMS of ``final``, its first results [M, ...]):
    ``TEACHER_SHARE`` of the smallest median error among the pairs of ``first_round``
    (``scoring.score_pairs``' list), within ``TEACHER_TOLERANCE_RANGE``."""
    scale = float(final.double().pow(2).mean().sqrt()) or 1.0
    medians = [float(errors.median()) for *_, errors in first_round if len(errors)]
    medians = [m for m in medians if math.isfinite(m)]
    low, high = TEACHER_TOLERANCE_RANGE
    if not medians:
        return high
    return min(high, max(low, TEACHER_SHARE * min(medians) / scale))


def _floor(call, teacher, train, held, pairs, own, shared: SolverSetup, batch_size: int, first_round=None) -> tuple:
    """(the floor, the starts): the best built-in pair and the one or two pairs fits start from.

    Every pair, the built-in ones (``pairs``) and the teacher-trajectory ones (``own``), is
    ranked by mean error in rounds of more and more samples (``FLOOR_PROBES``,
    ``FLOOR_SHORTLIST``, ``FLOOR_FINALISTS``; built-in and own pairs ranked apart), the last
    round on every validation sample, where the fit is judged. The floor is the best built-in
    finalist by the mean over its training and validation samples; the starts are the best
    finalist of all by that mean and, where another one, the best by ``scoring.typical_error``
    (the same samples, capped at the floor's median). The mean favours the pair with the fewest
    flips, the typical error the one closest on most samples; which of the two a fit does better
    from is not known before it runs (on the hard mixture at NFE 5-9 the second, on the
    power-law mixture at NFE 6 the first, by 2x). Each is a ``ScoredPair``. first_round: the built-in
    pairs already scored on the first probe samples (``score_pairs``' list), where the teacher's
    tolerance was measured on them."""
    first, second = FLOOR_PROBES
    probe, more = train[:first], train[first:first + second]

    def setup_of(pair_base, pair_fit):
        return dataclasses.replace(shared, base=pair_base, corrector=bool(pair_fit.corrector))

    def rounds(candidates, shortlist, finalists, scored=None):
        """The best ``finalists`` of ``candidates``: [(score, base, name, fit, training errors)]."""
        ranked = (scored or score_pairs(call, teacher, probe, candidates, shared, batch_size))[:shortlist]
        if len(more):
            longer = []
            for _, pair_base, pair_name, pair_fit, errors in ranked:
                extra = per_sample_errors(call, teacher, more, pair_fit, setup_of(pair_base, pair_fit), batch_size)
                errors = torch.cat([errors, extra])
                longer.append((mean_error(errors), pair_base, pair_name, pair_fit, errors))
            ranked = sorted(longer, key=lambda item: item[0])
        return ranked[:finalists]

    ranked = rounds(pairs, FLOOR_SHORTLIST, FLOOR_FINALISTS, first_round)
    ranked_own = rounds(own, 2, 1) if own else []
    finalists = []  # [(mean over training and validation seeds, ScoredPair)]
    for _, pair_base, pair_name, pair_fit, train_errors in ranked + ranked_own:
        pair_setup = setup_of(pair_base, pair_fit)
        held_errors = per_sample_errors(call, teacher, held, pair_fit, pair_setup, batch_size)
        finalists.append((mean_error(torch.cat([train_errors, held_errors])),
                          ScoredPair(pair_base, pair_name, pair_fit, held_errors, pair_setup, train_errors)))
    floor = min(finalists[:len(ranked)], key=lambda item: item[0])[1]
    by_mean = min(finalists, key=lambda item: item[0])[1]  # the floor where they tie
    reference = torch.cat([floor.train_errors, floor.errors])
    by_typical = min(finalists, key=lambda item: typical_error(torch.cat([item[1].train_errors, item[1].errors]),
                                                               reference))[1]
    return floor, [by_mean] if by_typical is by_mean else [by_mean, by_typical]


def _first_corrections(call, teacher, trajectories: StepCosts, plain: FittedSteps, setup: SolverSetup,
                       s: FitSettings, cap) -> FittedSteps:
    """``plain`` with the closed-form coefficient corrections (``fit.fit_corrections``) on the
    training samples whose teacher trajectories were kept and settled, against their states at
    the grid's points (the teacher's result at the end); ``plain`` itself where none is kept."""
    rows = [int(r) for r in trajectories.kept_rows if bool(teacher.settled[r])]
    if not rows:
        return plain
    sigmas = plain.sigmas
    targets = [teacher.final[rows] if float(v) == 0 else trajectories.states_at(float(v), rows) for v in sigmas[1:]]
    device = setup.device or teacher.start.device
    corrections = fit_corrections(call, teacher.start[rows].to(device), [t.to(device) for t in targets], sigmas,
                                  base=setup.base, convention=setup.convention, corrector=setup.corrector,
                                  extra_args=rows_of(setup.extra_args, torch.tensor(rows)), history=s.history,
                                  cap=cap)
    return FittedSteps(sigmas=sigmas, coordinate=plain.coordinate, d_corrections=corrections)


def _teacher_states(call, teacher, indices, sigmas, s: FitSettings, convention, sigma_min, extra_args, device):
    """A teacher record of the samples ``indices`` that keeps its states at every point of ``sigmas``
    (D-ODE's per-step targets), at the steps the refined teacher used for most samples."""
    grid = teacher_grid([sigmas], s.teacher_steps, convention, sigma_min)
    return record_teacher(call, teacher.start[indices].to(device), grid, sigmas[1:], base=s.teacher_base,
                          convention=convention, extra_args=extra_args, batch_size=s.inference_batch_size)
