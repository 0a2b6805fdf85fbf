"""``distill``: record a teacher once, then fit one solver per NFE with the chosen method."""

from __future__ import annotations

import time

import torch

from ..version import __version__
from ..learned_samplers import BASE_SOLVERS, HISTORY, resolve_convention
from ..schedules import exponential, karras, uniform
from .fit import (
    LOSSES,
    METHODS,
    StudentParameters,
    autocast_model,
    fit_gradient,
    fit_step_scales,
    rmse,
    start_noise_scale,
)
from ..schedules.grids import grid_coordinate
from ..schedules.solver import FittedSteps, LearnedSolver
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


def distill(model, shape, *, sigma_min: float, sigma_max: float, nfe=(4,), method: str = "auto",
            base: str = "dpmpp_2m", convention: str = "auto", init_sigmas="karras", samples: int = 48,
            validation: int = 16, seed: int = 0, teacher_base: str = "dpmpp_3m", teacher_steps: int = 48,
            iterations: int = 300, batch_size: int = 8, lr: dict | None = None, loss: str = "l2",
            slack: float = 0.001, decoupled: bool = True, history: int = 3, rounds: int = 3,
            use_checkpoint="auto", dtype=None, extra_args=None, device="cpu", start=None,
            inference_batch_size: int = 16, dode_samples: int | None = None, provenance: dict | None = None,
            progress=None, cancel=None) -> LearnedSolver:
    """Fit a few-step solver to ``model`` (a k-diffusion denoiser ``model(x, sigma, **extra_args)``).

    shape: one sample's shape, e.g. (4, 64, 64). sigma_min, sigma_max: the model's range (host
    units); grids start at sigma_max and their last positive sigma is kept. nfe: one or more
    step counts served by one teacher run. method: one of METHODS. samples / validation:
    training and validation start noises (validation picks the best snapshot and is the held-out
    error reported). start: explicit start states [samples + validation, *shape] instead of
    seeded noise. use_checkpoint: recompute each model call in backward ("auto": when the model
    has parameters or runs on a GPU). dtype: autocast dtype for model calls.
    inference_batch_size: samples per model run without gradients (teacher, validation), the
    bound on memory outside the gradient steps. dode_samples: training samples D-ODE's least
    squares uses (they go through the model at once; None: all). provenance: extra entries for the result's
    provenance (e.g. the model's family and CFG). progress(step, total, loss, held_out) after
    every teacher batch (loss and held_out NaN) and every iteration, ``total`` counting both;
    cancel() before every iteration and teacher batch: True (or an exception it raises) stops
    the fit.
    """
    nfes = sorted({int(n) for n in ([nfe] if isinstance(nfe, int) else nfe)})
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if base not in BASE_SOLVERS or teacher_base not in BASE_SOLVERS:
        raise ValueError(f"base and teacher_base must be among {', '.join(BASE_SOLVERS)}")
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; choose one of {', '.join(LOSSES)}")
    if not nfes or nfes[0] < 2:
        raise ValueError(f"NFE must be at least 2 for a learned solver; got {nfes}")
    if samples < 1 or validation < 1:
        raise ValueError("need at least one training and one validation sample")
    if not 1 <= history <= HISTORY:
        raise ValueError(f"history must be between 1 and {HISTORY}")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max; got {sigma_min} and {sigma_max}")
    convention = resolve_convention(model, convention)
    if use_checkpoint == "auto":
        has_weights = isinstance(model, torch.nn.Module) and any(True for _ in model.parameters())
        use_checkpoint = has_weights or torch.device(device).type != "cpu"
    began = time.perf_counter()
    call = autocast_model(model, dtype)
    grids = {n: initial_grid(init_sigmas, n, sigma_min, sigma_max) for n in nfes}
    if start is None:
        start = start_states(shape, samples + validation, sigma_max, convention, seed, device)
    elif start.shape[0] != samples + validation:
        raise ValueError(f"start has {start.shape[0]} samples; it must hold samples + validation = "
                         f"{samples + validation}")
    corrector = base.startswith("unipc")
    needs_states = method in ("auto", "dode")
    t_grid = teacher_grid(list(grids.values()), teacher_steps, convention, sigma_min)
    keep = sorted({float(s) for g in grids.values() for s in g[1:]}) if needs_states else []
    per_nfe = iterations
    teacher_batches = -(-start.shape[0] // inference_batch_size)
    total = teacher_batches + (len(nfes) if method == "dode" else per_nfe * len(nfes))
    teacher_progress = None
    if progress is not None:
        def teacher_progress(done_samples, _):
            progress(-(-done_samples // inference_batch_size), total, float("nan"), float("nan"))
    teacher = record_teacher(call, start, t_grid, keep, base=teacher_base, convention=convention,
                             extra_args=extra_args, batch_size=inference_batch_size, progress=teacher_progress,
                             cancel=cancel)
    if not torch.isfinite(teacher.final).all():
        raise FloatingPointError("the teacher run produced NaN or inf; check the model at these sigmas "
                                 "(and its dtype), or lower the CFG scale")
    order = torch.arange(samples + validation)
    train, held = order[:samples], order[samples:]
    sigma_range = (float(sigma_min), float(sigma_max))
    shared = dict(base=base, convention=convention, corrector=corrector, extra_args=extra_args, device=device,
                  batch_size=inference_batch_size)
    fits = {}
    for index, n in enumerate(nfes):
        fit_began = time.perf_counter()
        plain = FittedSteps(sigmas=grids[n], coordinate=grid_coordinate(grids[n], sigma_range, convention))
        base_rmse = rmse(call, teacher, held, plain, **shared)
        candidates = [(base_rmse, plain)]
        log = {"losses": [], "validation": [], "rejected": 0}
        if method in ("auto", "dode"):
            scales = fit_step_scales(call, teacher, grids[n], train, base=base, convention=convention,
                                     corrector=corrector, extra_args=extra_args, max_samples=dode_samples,
                                     device=device)
            cheap = FittedSteps(sigmas=grids[n], coordinate=plain.coordinate, step_scales=scales, method="dode")
            candidates.append((rmse(call, teacher, held, cheap, **shared), cheap))
            if progress is not None and method == "dode":
                progress(teacher_batches + index + 1, total, float("nan"), candidates[-1][0])
        gradient = dict(base=base, convention=convention, corrector=corrector, sigma_range=sigma_range,
                        batch_size=batch_size, lr=lr, loss=loss, slack=slack, history=history, seed=seed + n,
                        extra_args=extra_args, device=device, use_checkpoint=use_checkpoint,
                        progress=progress, cancel=cancel, total_steps=total, eval_batch_size=inference_batch_size)
        offsets = {"offsets"} if decoupled else set()
        first_step = teacher_batches + index * per_nfe
        if method == "auto":
            init = min(candidates, key=lambda c: c[0])[1]
            learn = {"grid", "coefficients", "step_scales"} | offsets
            best, score, _, log = fit_gradient(call, teacher, init, learn, train, held, method="auto",
                                               iterations=iterations, step_offset=first_step, **gradient)
            candidates.append((score, best))
        elif method in ("ld3", "s4s"):
            learn = ({"grid"} | offsets) if method == "ld3" else {"coefficients"}
            best, score, _, log = fit_gradient(call, teacher, plain, learn, train, held, method=method,
                                               iterations=iterations, step_offset=first_step, **gradient)
            candidates.append((score, best))
        elif method == "s4s_alt":
            params = StudentParameters(plain, convention, history, corrector, sigma_min)
            blocks = [{"coefficients"}, {"grid"} | offsets]
            done, learned = 0, set()
            chunk = max(1, iterations // (2 * rounds))
            for round_index in range(2 * rounds):
                block = blocks[round_index % 2]
                learned |= block
                length = chunk if round_index < 2 * rounds - 1 else iterations - done
                best, score, params, part = fit_gradient(call, teacher, plain, block, train, held, method="s4s_alt",
                                                         iterations=length, params=params, keep=set(learned),
                                                         step_offset=first_step + done, **gradient)
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
        "teacher": {"base": teacher_base, "steps": len(t_grid) - 1, "seconds": round(teacher.seconds, 3)},
        "samples": samples,
        "validation": validation,
        "seed": seed,
        "iterations": iterations,
        "loss": loss,
        "slack": slack,
        "shape": list(shape),
        "seconds": round(time.perf_counter() - began, 3),
        "package_version": __version__,
        **(provenance or {}),
    }
    return LearnedSolver(base=base, convention=convention, corrector=corrector, method=method,
                         sigma_range=sigma_range, fits=fits, provenance=provenance)
