"""Learned solvers against every built-in solver x schedule, per-sample error to an accurate
reference on held-out seeds: mean, median, tail.

    python benchmarks/distill_benchmark.py                       # the three unguided models, NFE 3 4 5 6 8 10
    python benchmarks/distill_benchmark.py --model hard --nfe 4 6
    python benchmarks/distill_benchmark.py --model mixture --methods auto ld3 s4s
    python benchmarks/distill_benchmark.py --model hard --seeds 0 1 2     # the spread from fit to fit
    python benchmarks/distill_benchmark.py --model hard --set iterations=100 samples=32   # other settings
    python benchmarks/distill_benchmark.py --model guided --cfg 1 4 7 --nfe 4 --prompts 0 3

(a) ``mixture``: the exact Gaussian-mixture denoiser sized like an SD latent (4x32x32), SD1.5's
    sigma range, start noise scaled as ComfyUI scales eps-model noise (sqrt(1 + sigma_max^2)).
(b) ``hard``: the same size and range, 16 components in 8 close pairs of different widths
    (``GaussianMixtureDenoiser.close_modes``): samples near a boundary between two components
    land in the other one unless the solver is accurate, and a 32-step teacher flips some.
(c) ``unet``: the package's shipped test UNet (an eps model on SD1.5's discrete schedule).
(d) ``guided``: the hard mixture with prompts: each close pair is one prompt's (8 prompts), and
    the model a fit sees is classifier-free guidance as ComfyUI computes it, uncond + cfg x
    (cond - uncond) on the denoised values (``GuidedDenoiser``), one prompt and scale per fit,
    as the Distill node fits one conditioning. ``--cfg`` and ``--prompts`` choose them; every
    (prompt, cfg) gets its own reference, built-in pairs and fit, a section each.
(e) ``cunet``: the class-conditional test UNet (4 classes, trained with the class dropped 15 %
    of the time), guided the same way (``testmodel.GuidedUNet``), classes from ``--prompts``.

The fit runs with the Distill node's defaults (``FitSettings()``: its samples, validation,
iterations, batch size and teacher) and nothing tuned for these models. Every figure is on
held-out seeds no part of the fit saw, against a reference that is the refined teacher at four
times the default steps, in float64 on the mixtures (its residual is printed). Built-in: every base solver x {karras,
exponential, time-uniform, AYS, beta}; "best" is the best pair *on the held-out seeds* (the
strongest floor there is). Per-sample error: RMSE of one sample to the reference; "mean",
"median", "p95" over the held-out seeds; "flips": the share of seeds whose error is above 0.1
(in this unit-variance latent, another mode); "far": the share of seeds whose error is above 3x
the best pair's median (another mode, in a unit that also holds under guidance, where every
error is larger); "RMSE": over every value of every seed (the metric of earlier versions of
this table). The ratio is mean(learned) / mean(best pair)
with a 90 % bootstrap interval; "closer": the share of seeds where the learned solver is
closer to the reference than the best pair; "calls": the fit's model calls per sample, without
gradients (teacher, scoring the built-ins, validation) / with gradients (forward and
recomputation; ``distill.cost``), "fit" its wall time and "eta" the first time-left estimate the
fit reported (as the total it implied) over that wall time. "returned": the floor pair when no fit
beat it, "<base> + trajectory" for the grid read off the teacher's trajectories, else the pair
the fit started from + learned.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from learned_solvers.distill import METHODS, FitSettings, NoiseLevels, RunHooks, distill, refine_teacher, start_states
from learned_solvers.distill.scoring import ratio_interval
from learned_solvers.learned_samplers import BASE_SOLVERS, GaussianMixtureDenoiser, sample_learned
from learned_solvers.schedules import builtin_schedules, discrete_vp_sigmas

SD15 = discrete_vp_sigmas()
FLIP = 0.1
FAR = 3.0


def errors_of(out, reference):
    return (out.double() - reference.double()).flatten(1).pow(2).mean(1).sqrt()


def describe(errors, far_from):
    """mean, median, p95 per-sample error, flips, far (above 3x ``far_from``, the best pair's
    median), and the overall RMSE (every value of every seed)."""
    return (f"{errors.mean():.4f} {errors.median():.4f} {errors.quantile(0.95):.4f} "
            f"{(errors > FLIP).double().mean():>5.1%} {(errors > FAR * far_from).double().mean():>5.1%} "
            f"{errors.pow(2).mean().sqrt():.4f}")


def reference_run(model, held, batch):
    """The reference results for ``held``: the refined teacher from 128 steps, in float64 where the
    model can be moved there (the mixtures)."""
    sigma_min, sigma_max = float(SD15[0]), float(SD15[-1])
    exact = model.to(dtype=torch.float64) if hasattr(model, "to") and not isinstance(model, torch.nn.Module) else None
    if exact is not None:
        return refine_teacher(exact, held.double(), 128, levels=NoiseLevels(sigma_min, sigma_max),
                              batch_size=batch)
    return refine_teacher(model, held, 128, levels=NoiseLevels(sigma_min, sigma_max),
                          batch_size=batch)


def run(name, model, shape, nfes, methods, held_out, out, batch=32, seeds=(0,), changes=None):
    sigma_min, sigma_max = float(SD15[0]), float(SD15[-1])
    schedules = builtin_schedules(sigma_min, sigma_max, "ve", SD15)
    held = start_states(shape, held_out, sigma_max, "ve", seed=10_000)
    began = time.perf_counter()
    reference = reference_run(model, held, batch)
    plain_teacher = refine_teacher(model, held, 32, levels=NoiseLevels(sigma_min, sigma_max),
                                   batch_size=batch, max_steps=32)
    teacher_errors = errors_of(plain_teacher.final, reference.final)
    print(f"\n## {name}: {held_out} held-out seeds; reference: {reference.base} refined from 128 steps (up to "
          f"{reference.report()['max_steps']}), residual {reference.residual:.5f}, "
          f"{int((~reference.settled).sum())} unsettled ({time.perf_counter() - began:.0f} s)", file=out)
    print(f"   a plain 32-step teacher against it: mean/median/p95/flips/far/RMSE "
          f"{describe(teacher_errors, teacher_errors.median())}", file=out)
    print(f"{'NFE':>4} {'best built-in pair':<26} {'mean':>6} {'median':>6} {'p95':>6} {'flips':>5} {'far':>5} {'RMSE':>6}   "
          f"{'learned':<8} {'mean':>6} {'median':>6} {'p95':>6} {'flips':>5} {'far':>5} {'RMSE':>6} {'ratio [90% CI]':>20} "
          f"{'closer':>6} {'calls':>13} {'fit':>5} {'eta':>4}  returned", file=out, flush=True)

    def sample(start, sigmas, **options):
        outs = []
        with torch.no_grad():
            for first in range(0, len(start), batch):
                outs.append(sample_learned(model, start[first:first + batch], sigmas.to(start.dtype), disable=True,
                                           **options))
        return torch.cat(outs)

    rows = {}
    for n in nfes:
        builtin = {}
        for base in BASE_SOLVERS:
            for grid_name, grid in schedules.items():
                builtin[(base, grid_name)] = errors_of(sample(held, grid(n), base=base), reference.final)
        (best_base, best_grid), best = min(builtin.items(), key=lambda item: float(item[1].mean()))
        for method, seed in [(method, seed) for method in methods for seed in seeds]:
            began = time.perf_counter()
            first_estimate = []  # the first time-left estimate, as the total it implies

            def progress(step, total, loss, held_out, seconds_left):
                if not first_estimate and seconds_left == seconds_left:
                    first_estimate.append(time.perf_counter() - began + seconds_left)

            solver = distill(model, shape,
                             levels=NoiseLevels(sigma_min, sigma_max, convention="ve", sigma_table=SD15),
                             nfe=[n], method=method, seed=seed, hooks=RunHooks(progress=progress), **(changes or {}))
            seconds = time.perf_counter() - began
            eta = first_estimate[0] / seconds if first_estimate else float("nan")
            fit = solver.fits[n]
            learned = errors_of(sample(held, fit.sigmas, **solver.sampler_options(n)), reference.final)
            low, high = ratio_interval(learned, best)
            ratio = float(learned.mean() / best.mean())
            closer = float((learned < best).double().mean())
            start = fit.start or fit.floor
            returned = {"builtin": f"{fit.floor['base']} + {fit.floor['schedule']}",
                        "trajectory": f"{fit.base} + trajectory"}.get(
                fit.method, f"{start['base']} + {start['schedule']} + learned")
            label = method if len(seeds) == 1 else f"{method} s{seed}"
            made = solver.provenance["cost"]["calls"]
            calls = f"{made['inference']:,}/{made['gradient']:,}"
            print(f"{n:>4} {best_base + ' + ' + best_grid:<26} {describe(best, best.median())}   {label:<8} "
                  f"{describe(learned, best.median())} "
                  f"{ratio:>6.2f} [{low:.2f}, {high:.2f}] {closer:>6.0%} {calls:>13} {seconds:>4.0f}s {eta:>4.2f}  "
                  f"{returned}",
                  file=out, flush=True)
            rows[(n, method, seed)] = {"best": best, "learned": learned, "ratio": ratio, "interval": (low, high),
                                       "calls": made}
    return rows


def cases(which, cfgs=(7.0,), prompts=(0, 3)):
    shape = (4, 32, 32)
    if which in ("mixture", "all"):
        yield "exact Gaussian mixture, 4x32x32, SD1.5 sigmas", GaussianMixtureDenoiser.power_law(shape=shape), shape
    if which in ("hard", "all"):
        yield ("hard mixture: 8 close pairs of different widths, 4x32x32, SD1.5 sigmas",
               GaussianMixtureDenoiser.close_modes(shape=shape), shape)
    if which in ("unet", "all"):
        from learned_solvers.testmodel import load_test_unet

        unet = load_test_unet()
        yield "shipped test UNet", unet, unet.sample_shape
    if which == "cunet":
        from learned_solvers.testmodel import CLASSES, GuidedUNet, load_test_unet

        unet = load_test_unet(conditional=True)
        for cfg in cfgs:
            for label in prompts:
                yield (f"guided class-conditional test UNet: class {label} ({CLASSES[label]}), CFG {cfg:g}",
                       GuidedUNet(unet, label, cfg), unet.sample_shape)
    if which == "guided":
        mixture = GaussianMixtureDenoiser.close_modes(shape=shape, prompts=True)
        for cfg in cfgs:
            for prompt in prompts:
                yield (f"guided hard mixture: prompt {prompt} of {mixture.prompts}, CFG {cfg:g}, 4x32x32, SD1.5 sigmas",
                       mixture.guided(prompt, cfg), shape)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["mixture", "hard", "unet", "guided", "cunet", "all"], default="all")
    parser.add_argument("--cfg", type=float, nargs="+", default=[1.0, 4.0, 7.0],
                        help="the guided models' CFG scales (a section each)")
    parser.add_argument("--prompts", type=int, nargs="+", default=[0, 3],
                        help="the guided models' prompts fitted (the mixture's 0-7, the UNet's classes 0-3), one "
                             "fit and section each")
    parser.add_argument("--nfe", type=int, nargs="+", default=[3, 4, 5, 6, 8, 10])
    parser.add_argument("--methods", nargs="+", default=["auto"], choices=list(METHODS))
    parser.add_argument("--held-out", type=int, default=256)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="fit seeds (FitSettings.seed: the training noises and the fit's own draws); "
                             "several show the spread of one setting from run to run")
    parser.add_argument("--set", nargs="+", default=[], metavar="NAME=VALUE",
                        help="FitSettings changes for every fit (numbers or words), e.g. iterations=100; the "
                             "table then no longer shows the node's defaults, and says so")
    args = parser.parse_args(argv)
    changes = {}
    for item in args.set:
        name, _, value = item.partition("=")
        for kind in (int, float):
            try:
                value = kind(value)
                break
            except ValueError:
                continue
        changes[name] = value
    FitSettings().replace(**changes).check()  # an unknown name or a bad value ends here, before any work
    torch.manual_seed(0)
    if changes:
        print(f"settings changed from the Distill node's defaults: {changes}")
    for name, model, shape in cases(args.model, args.cfg, args.prompts):
        run(name, model, shape, args.nfe, args.methods, args.held_out, sys.stdout, seeds=args.seeds, changes=changes)


if __name__ == "__main__":
    main()
