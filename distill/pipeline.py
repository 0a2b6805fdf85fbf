"""``distill``: record a teacher once, then fit one solver per NFE with the chosen method."""

from __future__ import annotations

import time

import torch

from ..version import __version__
from ..learned_samplers import resolve_convention
from ..schedules import exponential, karras, uniform
from .fit import StudentParameters, autocast_model, fit_gradient, fit_step_scales, rmse, start_noise_scale
from .settings import FitSettings, SolverSetup
from ..schedules.grids import grid_coordinate
from ..schedules.solver import MAX_NFE, FittedSteps, LearnedSolver
from .teacher import record_teacher, teacher_grid

GRID_NAMES = ("karras", "exponential", "uniform")


def initial_grid(init, nfe: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """The starting grid [nfe+1] ending in 0: a classical name, a callable nfe -> sigmas, or a dict."""
    if callable(init):
        sigmas = init(nfe)
    elif isinstance(init, dict):
        sigmas = init[nfe]
    elif init == "karras":
        sigmas = karras(nfe, sigma_min, sigma_max, final_zero=True)
    elif init == "exponential":
        sigmas = exponential(nfe, sigma_min, sigma_max, final_zero=True)
    elif init == "uniform":
        sigmas = uniform(nfe, sigma_min, sigma_max, final_zero=True)
    else:
        raise ValueError(f"unknown initial grid {init!r}; use one of {GRID_NAMES}, a dict or a callable")
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64).clone()
    if len(sigmas) != nfe + 1:
        raise ValueError(f"the initial grid for NFE {nfe} has {len(sigmas)} sigmas; it needs {nfe + 1}")
    # published schedules round the model's range (AYS for SD1.x: 14.615 ... 0.029); a learned
    # grid must stay inside it, so rounding is clamped and anything more is refused
    positive = sigmas > 0
    if ((sigmas[positive] > sigma_max * 1.01) | (sigmas[positive] < sigma_min * 0.99)).any():
        raise ValueError(f"the initial grid for NFE {nfe} leaves the model's sigma range "
                         f"[{sigma_min:g}, {sigma_max:g}]: {[round(float(s), 4) for s in sigmas]}")
    sigmas[positive] = sigmas[positive].clamp(sigma_min, sigma_max)
    return sigmas


def start_states(shape, count: int, sigma_max: float, convention: str, seed: int, device="cpu",
                 dtype=torch.float32) -> torch.Tensor:
    """Seeded start states [count, *shape]: unit noise times ``start_noise_scale``."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn((count,) + tuple(shape), generator=gen, dtype=torch.float64)
    return (start_noise_scale(sigma_max, convention) * noise).to(device=device, dtype=dtype)


def distill(model, shape, *, sigma_min: float, sigma_max: float, nfe=(4,), settings: FitSettings | None = None,
            convention: str = "auto", extra_args=None, device="cpu", start=None, provenance: dict | None = None,
            progress=None, cancel=None, **changes) -> LearnedSolver:
    """Fit a few-step solver to ``model`` (a k-diffusion denoiser ``model(x, sigma, **extra_args)``).

    shape: one sample's shape, e.g. (4, 64, 64). sigma_min, sigma_max: the model's range (host
    units); grids start at sigma_max and their last positive sigma is kept. nfe: one or more
    step counts served by one teacher run. settings: how to fit (``FitSettings``; its fields
    may also be given as keywords, ``method="ld3", iterations=100``, which change ``settings``).
    start: explicit start states [samples + validation, *shape] instead of seeded noise.
    provenance: extra entries for the result's provenance (e.g. the model's family and CFG).
    progress(step, total, loss, held_out) after every teacher batch (loss and held_out NaN) and
    every iteration, ``total`` counting both; cancel() before every iteration and teacher batch:
    True (or an exception it raises) stops the fit.
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
    began = time.perf_counter()
    call = autocast_model(model, s.dtype)
    grids = {n: initial_grid(s.init_sigmas, n, sigma_min, sigma_max) for n in nfes}
    count = s.samples + s.validation
    if start is None:
        start = start_states(shape, count, sigma_max, convention, s.seed, device)
    elif start.shape[0] != count:
        raise ValueError(f"start has {start.shape[0]} samples; it must hold samples + validation = {count}")
    method = s.method
    setup = SolverSetup(base=s.base, convention=convention, corrector=s.base.startswith("unipc"),
                        sigma_range=(float(sigma_min), float(sigma_max)), extra_args=extra_args, device=device)
    needs_states = method in ("auto", "dode")
    t_grid = teacher_grid(list(grids.values()), s.teacher_steps, convention, sigma_min)
    keep = sorted({float(x) for g in grids.values() for x in g[1:]}) if needs_states else []
    teacher_batches = -(-count // s.inference_batch_size)
    total = teacher_batches + (len(nfes) if method == "dode" else s.iterations * len(nfes))
    teacher_progress = None
    if progress is not None:
        def teacher_progress(done_samples, _):
            progress(-(-done_samples // s.inference_batch_size), total, float("nan"), float("nan"))
    teacher = record_teacher(call, start, t_grid, keep, base=s.teacher_base, convention=convention,
                             extra_args=extra_args, batch_size=s.inference_batch_size, progress=teacher_progress,
                             cancel=cancel)
    if not torch.isfinite(teacher.final).all():
        raise FloatingPointError("the teacher run produced NaN or inf; check the model at these sigmas "
                                 "(and its dtype), or lower the CFG scale")
    order = torch.arange(count)
    train, held = order[:s.samples], order[s.samples:]
    offsets = {"offsets"} if s.decoupled else set()
    fits = {}
    for index, n in enumerate(nfes):
        fit_began = time.perf_counter()
        plain = FittedSteps(sigmas=grids[n], coordinate=grid_coordinate(grids[n], setup.sigma_range, convention))
        base_rmse = rmse(call, teacher, held, plain, setup, s.inference_batch_size)
        candidates = [(base_rmse, plain)]
        log = {"losses": [], "validation": [], "rejected": 0}
        if method in ("auto", "dode"):
            scales = fit_step_scales(call, teacher, grids[n], train, base=s.base, convention=convention,
                                     corrector=setup.corrector, extra_args=extra_args, max_samples=s.dode_samples,
                                     device=device)
            cheap = FittedSteps(sigmas=grids[n], coordinate=plain.coordinate, step_scales=scales, method="dode")
            candidates.append((rmse(call, teacher, held, cheap, setup, s.inference_batch_size), cheap))
            if progress is not None and method == "dode":
                progress(teacher_batches + index + 1, total, float("nan"), candidates[-1][0])
        gradient = dict(seed=s.seed + n, progress=progress, cancel=cancel, total_steps=total)
        first_step = teacher_batches + index * s.iterations
        if method == "auto":
            init = min(candidates, key=lambda c: c[0])[1]
            learn = {"grid", "coefficients", "step_scales"} | offsets
            best, score, _, log = fit_gradient(call, teacher, init, learn, train, held, setup, s, method="auto",
                                               iterations=s.iterations, step_offset=first_step, **gradient)
            candidates.append((score, best))
        elif method in ("ld3", "s4s"):
            learn = ({"grid"} | offsets) if method == "ld3" else {"coefficients"}
            best, score, _, log = fit_gradient(call, teacher, plain, learn, train, held, setup, s, method=method,
                                               iterations=s.iterations, step_offset=first_step, **gradient)
            candidates.append((score, best))
        elif method == "s4s_alt":
            params = StudentParameters(plain, convention, s.history, setup.corrector, sigma_min)
            blocks = [{"coefficients"}, {"grid"} | offsets]
            done, learned = 0, set()
            chunk = max(1, s.iterations // (2 * s.rounds))
            for round_index in range(2 * s.rounds):
                block = blocks[round_index % 2]
                learned |= block
                length = chunk if round_index < 2 * s.rounds - 1 else s.iterations - done
                best, score, params, part = fit_gradient(call, teacher, plain, block, train, held, setup, s,
                                                         method="s4s_alt", iterations=length, params=params,
                                                         keep=set(learned), step_offset=first_step + done,
                                                         **gradient)
                done += length
                log["losses"] += part["losses"]
                log["validation"] += part["validation"]
                log["rejected"] += part["rejected"]
            candidates.append((score, best))  # each block starts from the previous block's best
        score, chosen = min(candidates, key=lambda c: c[0])
        chosen.held_out_rmse = score
        chosen.base_held_out_rmse = base_rmse
        chosen.fit_seconds = time.perf_counter() - fit_began
        chosen.losses = log["losses"]
        chosen.validation = log["validation"]
        chosen.rejected_steps = log["rejected"]
        fits[n] = chosen
    provenance = {
        "teacher": {"base": s.teacher_base, "steps": len(t_grid) - 1, "seconds": round(teacher.seconds, 3)},
        "samples": s.samples,
        "validation": s.validation,
        "seed": s.seed,
        "iterations": s.iterations,
        "loss": s.loss,
        "slack": s.slack,
        "shape": list(shape),
        "seconds": round(time.perf_counter() - began, 3),
        "package_version": __version__,
        **(provenance or {}),
    }
    return LearnedSolver(base=s.base, convention=convention, corrector=setup.corrector, method=method,
                         sigma_range=setup.sigma_range, fits=fits, provenance=provenance)
