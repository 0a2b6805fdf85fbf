"""Learned solvers against every classical solver x schedule, RMSE to the teacher on held-out seeds.

    python benchmarks/distill_benchmark.py                  # both models, NFE 3 4 5 6 8 10
    python benchmarks/distill_benchmark.py --model mixture --nfe 4 6

(a) ``mixture``: the exact Gaussian-mixture denoiser sized like an SD latent (4x32x32), SD1.5's
    sigma range, start noise scaled as ComfyUI scales eps-model noise (sqrt(1 + sigma_max^2)).
(b) ``unet``: the package's shipped test UNet (an eps model on SD1.5's discrete schedule).

Classical: every base solver x {karras, exponential, time-uniform, AYS-style log-linear}. The
learned methods start from the best classical pair found on the *training* seeds; every number
is measured on held-out seeds that neither the fit nor that choice saw. The teacher's residual
is its RMSE to a 4x finer run of the same solver.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from learned_solvers.distill import METHODS, distill, start_states
from learned_solvers.learned_samplers import BASE_SOLVERS, GaussianMixtureDenoiser, sample_learned
from learned_solvers.schedules import discrete_vp_sigmas, exponential, sd15_schedules

SD15 = discrete_vp_sigmas()


def rmse_to(target, model, start, sigmas, **options):
    with torch.no_grad():
        out = sample_learned(model, start, sigmas.to(start.dtype), disable=True, **options)
    return (out.double() - target.double()).pow(2).mean().sqrt().item()


def run(name, model, shape, sigma_min, sigma_max, nfes, methods, held_out, train_seeds,
        iterations, teacher_steps, out):
    grids = sd15_schedules()
    held = start_states(shape, held_out, sigma_max, "ve", seed=10_000)
    probe = start_states(shape, train_seeds, sigma_max, "ve", seed=0)[:32]

    def teacher_for(start, steps):
        grid = exponential(steps, sigma_min, sigma_max, final_zero=True)
        with torch.no_grad():
            return sample_learned(model, start, grid.to(start.dtype), disable=True, base="dpmpp_3m")

    began = time.perf_counter()
    teacher = teacher_for(held, teacher_steps)
    finer = teacher_for(held, 4 * teacher_steps)
    residual = (teacher.double() - finer.double()).pow(2).mean().sqrt().item()
    probe_teacher = teacher_for(probe, teacher_steps)
    print(f"\n## {name}: teacher dpmpp_3m, {teacher_steps} steps, residual {residual:.4f} "
          f"({time.perf_counter() - began:.0f} s); {held_out} held-out seeds", file=out)
    header = f"{'NFE':>4} {'best classical':<26} {'RMSE':>7}" + "".join(f"{m:>15}" for m in methods)
    print(header, file=out)
    rows = {}
    for n in nfes:
        scores = {}
        for base in BASE_SOLVERS:
            for grid_name, grid in grids.items():
                scores[(base, grid_name)] = rmse_to(teacher, model, held, grid(n), base=base)
        (best_base, best_grid), best = min(scores.items(), key=lambda item: item[1])
        # the learned methods start from the best pair on *training* seeds
        probe_scores = {key: rmse_to(probe_teacher, model, probe, grids[key[1]](n), base=key[0])
                        for key in scores}
        init_base, init_grid = min(probe_scores, key=probe_scores.get)
        cells = []
        for method in methods:
            began = time.perf_counter()
            solver = distill(model, shape, sigma_min=sigma_min, sigma_max=sigma_max, nfe=[n], method=method,
                             base=init_base, init_sigmas=grids[init_grid], samples=train_seeds - 32,
                             validation=32, seed=0, iterations=iterations, teacher_steps=teacher_steps,
                             convention="ve")
            seconds = time.perf_counter() - began
            with torch.no_grad():
                learned = solver.sample(model, held, n)
            score = (learned.double() - teacher.double()).pow(2).mean().sqrt().item()
            cells.append((score, seconds))
        rows[n] = (best, cells)
        line = f"{n:>4} {best_base + ' + ' + best_grid:<26} {best:>7.4f}"
        line += "".join(f"{s:>8.4f} ({t:>3.0f}s)" for s, t in cells)
        ratio = min(s for s, _ in cells) / best
        print(line + f"   best learned / classical = {ratio:.2f}", file=out, flush=True)
    return rows


def mixture_case():
    model = GaussianMixtureDenoiser.power_law(shape=(4, 32, 32), seed=0)
    return model, (4, 32, 32), float(SD15[0]), float(SD15[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["mixture", "unet", "both"], default="both")
    parser.add_argument("--nfe", type=int, nargs="+", default=[3, 4, 5, 6, 8, 10])
    parser.add_argument("--methods", nargs="+", default=[m for m in METHODS if m != "auto"] + ["auto"])
    parser.add_argument("--held-out", type=int, default=256)
    parser.add_argument("--train", type=int, default=160)
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--teacher-steps", type=int, default=48)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    cases = []
    if args.model in ("mixture", "both"):
        cases.append(("exact Gaussian mixture, 4x32x32, SD1.5 sigmas", mixture_case()))
    if args.model in ("unet", "both"):
        from learned_solvers.testmodel import load_test_unet

        unet = load_test_unet()
        cases.append(("shipped test UNet", (unet, unet.sample_shape, float(SD15[0]), float(SD15[-1]))))
    for name, (model, shape, sigma_min, sigma_max) in cases:
        run(name, model, shape, sigma_min, sigma_max, args.nfe, args.methods, args.held_out,
            args.train, args.iterations, args.teacher_steps, sys.stdout)


if __name__ == "__main__":
    main()
