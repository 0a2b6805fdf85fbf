"""``distill``: an accurate teacher once, as accurate as the fitted NFEs need (which also reads a
grid off its own trajectories, ``trajectory``), then per NFE: score the built-in pairs and the
trajectory grid's, start from the best, fit with the chosen method, and keep the fit only where
it beats the best built-in pair and diverges on no more fresh seeds than that pair."""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

import torch

from ..version import __version__
from ..learned_samplers import BASE_SOLVERS, resolve_convention
from ..schedules import builtin_schedules, uniform
from .cost import CallCounter, TimeLeft, fit_calls, planned_calls
from .fit import (CAP_FACTOR, StudentParameters, autocast_model, fit_corrections, fit_gradient, fit_step_scales,
                  start_noise_scale)
from .scoring import (builtin_pairs, diverged, error_summary, mean_error, no_worse_tail, overall_rmse,
                      per_sample_errors, ratio_interval, score_pairs, typical_error)
from .prompts import PerSample, PromptSplit, assign_prompts, route_prompts, rows_of, split_prompts
from .settings import FitSettings, SolverSetup
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


def candidate_schedules(init, sigma_min: float, sigma_max: float, convention: str, sigma_table=None,
                        extra: dict | None = None) -> dict:
    """The schedules a fit may start from: name -> (nfe -> sigmas).

    init "auto": every built-in (``builtin_schedules``) plus ``extra`` (a host's own, e.g.
    ComfyUI's schedulers for the loaded model); a built-in name: that one; a dict nfe -> sigmas
    or a callable nfe -> sigmas: that grid ("given").
    """
    # the host's own first: where two schedules give the same grid, the name the user knows is kept
    known = dict(extra or {})
    for name, make in builtin_schedules(sigma_min, sigma_max, convention, sigma_table).items():
        known.setdefault(name, make)
    known["uniform"] = lambda n: uniform(n, sigma_min, sigma_max, final_zero=True)
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


def distill(model, shape, *, sigma_min: float, sigma_max: float, nfe=(4,), settings: FitSettings | None = None,
            convention: str = "auto", extra_args=None, device="cpu", start=None, provenance: dict | None = None,
            progress=None, cancel=None, sigma_table=None, schedules: dict | None = None, teacher_model=None,
            prompts=None, **changes) -> LearnedSolver:
    """Fit a few-step solver to ``model`` (a k-diffusion denoiser ``model(x, sigma, **extra_args)``).

    shape: one sample's shape, e.g. (4, 64, 64). sigma_min, sigma_max: the model's range (host
    units); grids start at sigma_max and their last positive sigma is kept. nfe: one or more
    step counts served by one teacher run. settings: how to fit (``FitSettings``; its fields
    may also be given as keywords, ``method="ld3", iterations=100``, which change ``settings``).
    start: explicit start states [samples + validation, *shape] instead of seeded noise.
    provenance: extra entries for the result's provenance (e.g. the model's family and CFG).
    sigma_table: a discrete model's ascending sigma table (for its time-uniform schedule);
    schedules: the host's own schedules, name -> (nfe -> sigmas), scored with the built-ins.
    teacher_model: the denoiser the teacher runs (default ``model``): a solver fitted on a
    distilled network (``sfd``) follows the original network's teacher.
    prompts: several conditionings in one fit: a count P (``model`` then takes a keyword
    ``prompt``, [B] indices 0..P-1) or a list of extra_args dicts, one per prompt. Training
    seeds go round the prompts at even positions; validation seeds round every prompt, so the
    others are held out of training (``prompts.split_prompts``); each fit reports its mean
    error on both halves (``held_out`` and ``floor``: "training_prompts", "held_out_prompts").
    progress(step, total, loss, held_out, seconds_left) after every teacher batch (loss and
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
    nfes = sorted({int(n) for n in ([nfe] if isinstance(nfe, int) else nfe)})
    if not nfes or nfes[0] < 2:
        raise ValueError(f"NFE must be at least 2 for a learned solver; got {nfes}")
    if nfes[-1] > MAX_NFE:
        raise ValueError(f"NFE must be at most {MAX_NFE} for a learned solver (a few-step sampler); got {nfes}")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max; got {sigma_min} and {sigma_max}")
    convention = resolve_convention(model, convention)
    if s.use_checkpoint == "auto":
        has_weights = isinstance(model, torch.nn.Module) and any(True for _ in model.parameters())
        s = s.replace(use_checkpoint=has_weights or torch.device(device).type != "cpu")
    model, split = _with_prompts(model, prompts, convention)
    began = time.perf_counter()
    counter = CallCounter(autocast_model(model, s.dtype))
    call = counter
    time_left = TimeLeft(counter, checkpoint=bool(s.use_checkpoint))
    candidates_by_name = candidate_schedules(s.init_sigmas, sigma_min, sigma_max, convention, sigma_table, schedules)
    bases = list(BASE_SOLVERS) if s.base == "auto" else [s.base]
    count = s.samples + s.validation
    if start is None:
        start = start_states(shape, count, sigma_max, convention, s.seed, device)
    elif start.shape[0] != count:
        raise ValueError(f"start has {start.shape[0]} samples; it must hold samples + validation = {count}")
    assignment = assign_prompts(split, s.samples, s.validation) if split else None
    extra_args = {**(extra_args or {}), "prompt": PerSample(assignment)} if split else extra_args
    method = s.method
    sigma_range = (float(sigma_min), float(sigma_max))
    pairs_by_nfe = {n: builtin_pairs(candidates_by_name, n, bases, sigma_min, sigma_max, convention) for n in nfes}
    # with init_sigmas "auto" the teacher's trajectories also give a start: its grid is scored
    # with each base as one more candidate (never as the floor); where the fit learns
    # coefficients, the trajectories of a few training samples are kept for their first guess
    fits_coefficients = method in ("auto", "s4s")
    trajectories = s.init_sigmas == "auto" or fits_coefficients
    # they go through the model at once: no more than a closed form may put there (dode_samples)
    kept = min(CORRECTION_SAMPLES, s.samples, s.dode_samples or CORRECTION_SAMPLES) if fits_coefficients else 0
    step_costs = StepCosts(torch.arange(count) < s.samples, keep=kept, convention=convention) if trajectories else None
    own_grids = step_costs is not None and s.init_sigmas == "auto"
    for n, pairs in pairs_by_nfe.items():
        if not pairs:
            raise ValueError(f"no schedule gives a valid {n}-step grid on this model's range")
        starts = len(bases) if own_grids else 0
        plan = planned_calls(nfe=n, samples=s.samples, validation=s.validation, pairs=len(pairs),
                             own_pairs=starts, corrections=kept, iterations=s.iterations, batch_size=s.batch_size,
                             validate_every=s.validate_every, checkpoint=bool(s.use_checkpoint),
                             teacher_steps=s.teacher_steps, gradient_fit=method != "dode", probes=FLOOR_PROBES,
                             shortlist=FLOOR_SHORTLIST, finalists=FLOOR_FINALISTS, screen=SCREEN_SAMPLES)
        for kind, calls in plan.items():
            time_left.plan(kind, calls)
    iterations_total = len(nfes) if method == "dode" else s.iterations * len(nfes)
    state = {"teacher_total": 3 * -(-count // s.inference_batch_size)}

    def report(step, total, loss, held_out):
        if progress is not None:
            progress(step, total, loss, held_out, time_left.seconds())

    def teacher_progress(done, total):
        state["teacher_total"] = total
        report(done, total + iterations_total, float("nan"), float("nan"))

    teacher_call = None if teacher_model is None else autocast_model(teacher_model, s.dtype)
    shared = SolverSetup(base=bases[0], convention=convention, corrector=bases[0].startswith("unipc"),
                         sigma_range=sigma_range, extra_args=extra_args, device=device)
    probes = torch.arange(min(FLOOR_PROBES[0], s.samples))
    early = {}  # the largest NFE's first floor round, scored against the teacher's first results
    tolerance = s.teacher_tolerance
    student_call = counter.model
    if tolerance == "auto":
        def tolerance(final):
            first = FirstResults(start=start, final=final)
            mark = counter.report()["calls"]
            with counter.phase("floor"), counter.using(student_call if teacher_call is not None else None):
                early["first_round"] = score_pairs(call, first, probes, pairs_by_nfe[nfes[-1]], shared,
                                                   s.inference_batch_size)
            early["calls"] = counter.since(mark)  # the largest NFE's fit's calls
            return teacher_tolerance(early["first_round"], final)
    with counter.phase("teacher"), counter.using(teacher_call):
        teacher = refine_teacher(call, start, s.teacher_steps, sigma_min=sigma_min, sigma_max=sigma_max,
                                 base=s.teacher_base, convention=convention, extra_args=extra_args,
                                 batch_size=s.inference_batch_size, tolerance=tolerance,
                                 progress=teacher_progress, cancel=cancel,
                                 plan=lambda calls: time_left.plan("inference", calls), trace=step_costs)
    if not torch.isfinite(teacher.final).all():
        raise FloatingPointError("the teacher run produced NaN or inf; check the model at these sigmas "
                                 "(and its dtype), or lower the CFG scale")
    # samples the teacher could not settle even at its finest level are left out of the fit
    order = torch.arange(count)
    train, held = order[:s.samples][teacher.settled[:s.samples]], order[s.samples:][teacher.settled[s.samples:]]
    # the first floor round stands where its probe seeds are still the first training seeds, unrefined
    unrefined = bool((teacher.sample_steps[probes] == teacher.sample_steps.min()).all())
    unchanged = unrefined and torch.equal(train[:len(probes)], probes)
    first_round = early.get("first_round") if unchanged else None
    if len(train) == 0 or len(held) == 0:
        raise FloatingPointError(f"the teacher did not settle (its results still moved at {teacher.report()['max_steps']} "
                                 f"steps) on every training or validation sample; check the model, or lower the CFG")
    screen = start_states(shape, SCREEN_SAMPLES, sigma_max, convention, s.seed + SCREEN_SEED, device, start.dtype)
    # the screen's seeds go round every prompt, as the validation seeds do
    screen_args = ({**extra_args, "prompt": PerSample(assign_prompts(split, 0, SCREEN_SAMPLES))} if split
                   else extra_args)
    largest_result = float(teacher.final[teacher.settled].double().flatten(1).pow(2).mean(1).sqrt().max())
    total = state["teacher_total"] + iterations_total
    teacher_batches = state["teacher_total"]
    steps_done = teacher_batches  # the progress count: teacher batches, then every fit's iterations
    offsets = {"offsets"} if s.decoupled else set()
    fits = {}
    for index, n in enumerate(nfes):
        fit_began = time.perf_counter()
        calls_before = counter.report()["calls"]
        pairs = pairs_by_nfe[n]
        own = (builtin_pairs({TRAJECTORY: step_costs.grid}, n, bases, sigma_min, sigma_max, convention)
               if own_grids else [])
        with counter.phase("floor"):
            floor, starts = _floor(call, teacher, train, held, pairs, own, shared, s.inference_batch_size,
                                   first_round if n == nfes[-1] else None)
        floor_base, floor_name, floor_fit, floor_errors, floor_setup, floor_train = floor
        floor_fit.method = "builtin"
        if method == "dode":  # a closed form from one grid: its start is the best by mean
            starts = starts[:1]
        if len(starts) > 1:  # the second fit's steps and calls join the progress and the plan now that they are known
            total += s.iterations
            for kind, calls in fit_calls(nfe=n, validation=len(held), iterations=s.iterations,
                                         batch_size=s.batch_size, validate_every=s.validate_every,
                                         checkpoint=bool(s.use_checkpoint), corrections=kept).items():
                time_left.plan(kind, calls)

        def fit_from(start, first_step):
            """The method's fit from one start: (best FittedSteps, log)."""
            start_base, start_name, start_fit, start_errors, setup, start_train = start
            plain = FittedSteps(sigmas=start_fit.sigmas, coordinate=start_fit.coordinate)
            log = {"losses": [], "validation": [], "rejected": 0}
            cap = CAP_FACTOR * float(start_train.median()) if len(start_train) else None
            gradient = dict(seed=s.seed + n, progress=report, cancel=cancel, total_steps=total,
                            floor_errors=floor_errors, loss_cap=cap)
            if method == "dode":
                rows = train[:s.dode_samples] if s.dode_samples else train
                states = _teacher_states(call, teacher, rows, start_fit.sigmas, s, convention, sigma_min,
                                         rows_of(extra_args, rows), device)
                scales = fit_step_scales(call, states, start_fit.sigmas, torch.arange(states.start.shape[0]),
                                         base=start_base, convention=convention, corrector=setup.corrector,
                                         extra_args=rows_of(extra_args, rows), device=device)
                best = FittedSteps(sigmas=start_fit.sigmas, coordinate=start_fit.coordinate, step_scales=scales,
                                   method="dode")
            elif method in ("auto", "ld3", "s4s"):
                learn = {"auto": {"grid", "coefficients", "step_scales"} | offsets, "ld3": {"grid"} | offsets,
                         "s4s": {"coefficients"}}[method]
                if fits_coefficients:  # the gradient steps start from the closed-form corrections
                    plain = _first_corrections(call, teacher, step_costs, plain, setup, s, cap)
                best, _, _, log = fit_gradient(call, teacher, plain, learn, train, held, setup, s, method=method,
                                               iterations=s.iterations, step_offset=first_step, **gradient)
            else:  # s4s_alt: each block starts from the previous block's best
                params = StudentParameters(plain, convention, s.history, setup.corrector, sigma_min)
                blocks = [{"coefficients"}, {"grid"} | offsets]
                done, learned = 0, set()
                chunk = max(1, s.iterations // (2 * s.rounds))
                for round_index in range(2 * s.rounds):
                    block = blocks[round_index % 2]
                    learned |= block
                    length = chunk if round_index < 2 * s.rounds - 1 else s.iterations - done
                    best, _, params, part = fit_gradient(call, teacher, plain, block, train, held, setup, s,
                                                         method="s4s_alt", iterations=length, params=params,
                                                         keep=set(learned), step_offset=first_step + done, **gradient)
                    done += length
                    log["losses"] += part["losses"]
                    log["validation"] += part["validation"]
                    log["rejected"] += part["rejected"]
                    log["best_errors"] = part["best_errors"]
            return best, log

        with counter.phase("fit"):
            fitted = []
            for start in starts:
                fitted.append((start, *fit_from(start, steps_done)))
                steps_done += 0 if method == "dode" else s.iterations
        for start, best, log in fitted:
            if log.get("best_errors") is None:  # the gradient fits measured their best snapshot already
                with counter.phase("selection"):
                    log["best_errors"] = per_sample_errors(call, teacher, held, best, start[4], s.inference_batch_size)
        # between fits from two starts, the one that keeps typical samples closer (the tail is
        # guarded below either way); the first where they tie
        start, best, log = min(fitted, key=lambda f: typical_error(f[2]["best_errors"], floor_errors))
        start_base, start_name, start_fit, start_errors, setup, start_train = start
        errors = log["best_errors"]
        with counter.phase("selection"):  # fresh seeds, only the results' size: no teacher run
            limit = DIVERGED_FACTOR * largest_result
            on_screen = lambda fitted, its: int(diverged(call, screen, fitted, dataclasses.replace(  # noqa: E731
                its, extra_args=screen_args), limit, s.inference_batch_size).sum())
            diverging = on_screen(best, setup)
            # the pair may diverge there too (multistep samplers do under strong guidance)
            floor_diverging = on_screen(floor_fit, floor_setup) if diverging else 0
        # a fit that adds flips, or diverges on more screened seeds than the pair, is not taken;
        # ties keep the built-in pair
        adds_divergence = diverging > floor_diverging
        fitted_score = mean_error(errors) if no_worse_tail(errors, floor_errors) and not adds_divergence else math.inf
        candidates = [(mean_error(floor_errors), floor_fit, floor_errors, floor_setup)]
        for _, pair_name, pair_fit, pair_errors, pair_setup, _ in starts:
            if pair_name == TRAJECTORY:  # the teacher's own grid with the plain base: kept where it adds no flips
                pair_fit.method = "trajectory"
                allowed = no_worse_tail(pair_errors, floor_errors)
                candidates.append((mean_error(pair_errors) if allowed else math.inf, pair_fit, pair_errors, pair_setup))
        candidates.append((fitted_score, best, errors, setup))
        if method == "dode":
            report(teacher_batches + index + 1, total, float("nan"), overall_rmse(errors))
        score, chosen, errors, chosen_setup = min(candidates, key=lambda c: c[0])  # ties keep the built-in pair
        chosen.base, chosen.corrector = chosen_setup.base, chosen_setup.corrector
        chosen.held_out_rmse = overall_rmse(errors)
        chosen.base_held_out_rmse = overall_rmse(floor_errors)
        low, high = ratio_interval(errors, floor_errors)
        chosen.held_out = {**error_summary(errors), "closer": float((errors < floor_errors).double().mean()),
                           "ratio_low": low, "ratio_high": high}
        chosen.floor = {"base": floor_base, "schedule": floor_name, **error_summary(floor_errors)}
        if split and split.held_out:
            chosen.held_out.update(_by_prompt_half(errors, assignment[held], split))
            chosen.floor.update(_by_prompt_half(floor_errors, assignment[held], split))
        chosen.start = {"base": start_base, "schedule": start_name}
        others = [f"{other[0]} + {other[1]}" for other, _, _ in fitted if other is not start]
        if others:  # fitted from there too, and not kept
            chosen.start["also_fitted"] = others[0]
        if adds_divergence:
            chosen.start["diverged"] = f"{diverging} of {SCREEN_SAMPLES} (the pair on {floor_diverging})"
        chosen.fit_seconds = time.perf_counter() - fit_began
        chosen.losses = log["losses"]
        chosen.validation = log["validation"]
        chosen.rejected_steps = log["rejected"]
        chosen.model_calls = counter.since(calls_before)
        if n == nfes[-1] and "calls" in early:
            chosen.model_calls = {kind: calls + early["calls"][kind] for kind, calls in chosen.model_calls.items()}
        fits[n] = chosen
    provenance = {
        "teacher": teacher.report(),
        "samples": s.samples,
        "validation": s.validation,
        "seed": s.seed,
        "iterations": s.iterations,
        "loss": s.loss,
        "slack": s.slack,
        "shape": list(shape),
        "seconds": round(time.perf_counter() - began, 3),
        "package_version": __version__,
        "cost": {**counter.report(), "planned": dict(time_left.planned)},
        **({"prompts": split.report()} if split else {}),
        **(provenance or {}),
    }
    first = fits[nfes[0]]
    return LearnedSolver(base=first.base, convention=convention, corrector=first.corrector, method=method,
                         sigma_range=sigma_range, fits=fits, provenance=provenance)


def _with_prompts(model, prompts, convention: str) -> tuple:
    """(the model, its ``PromptSplit`` or None) for ``distill``'s ``prompts``: a list of extra_args
    dicts becomes one model that takes ``prompt``."""
    if prompts is None:
        return model, None
    if isinstance(prompts, (list, tuple)):
        if not all(isinstance(p, dict) for p in prompts):
            raise ValueError("prompts must be a count or a list of extra_args dicts, one per prompt")
        routed = route_prompts([lambda x, sigma, _args=args, **kw: model(x, sigma, **{**_args, **kw})
                                for args in prompts])
        routed.sigma_convention = convention
        return routed, split_prompts(len(prompts))
    if isinstance(prompts, bool) or not isinstance(prompts, int) or prompts < 1:
        raise ValueError(f"prompts must be a positive count or a list of extra_args dicts; got {prompts!r}")
    return model, split_prompts(prompts)


def _by_prompt_half(errors: torch.Tensor, prompt_of: torch.Tensor, split: PromptSplit) -> dict:
    """The mean per-sample error on the validation seeds of the training prompts and on those of
    the held-out prompts (``errors`` and ``prompt_of`` [V], one per validation seed)."""
    trained = torch.isin(prompt_of, torch.tensor(split.training))
    return {"training_prompts": mean_error(errors[trained]), "held_out_prompts": mean_error(errors[~trained])}


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
    power-law mixture at NFE 6 the first, by 2x). Each is (base, schedule name, its FittedSteps,
    its validation errors, its SolverSetup, its training errors). first_round: the built-in
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
    finalists = []
    for _, pair_base, pair_name, pair_fit, train_errors in ranked + ranked_own:
        pair_setup = setup_of(pair_base, pair_fit)
        held_errors = per_sample_errors(call, teacher, held, pair_fit, pair_setup, batch_size)
        finalists.append((mean_error(torch.cat([train_errors, held_errors])), pair_base, pair_name, pair_fit,
                          held_errors, pair_setup, train_errors))
    floor = min(finalists[:len(ranked)], key=lambda item: item[0])
    by_mean = min(finalists, key=lambda item: item[0])  # the floor where they tie
    reference = torch.cat([floor[6], floor[4]])
    by_typical = min(finalists, key=lambda item: typical_error(torch.cat([item[6], item[4]]), reference))
    starts = [by_mean] if by_typical is by_mean else [by_mean, by_typical]
    return floor[1:], [start[1:] for start in starts]


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
