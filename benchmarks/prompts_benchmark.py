"""One fit for a whole model: a fit on several prompts against a fit on one, on prompts neither saw.

    python benchmarks/prompts_benchmark.py                     # CFG 7, NFE 4 and 6, 8 prompts
    python benchmarks/prompts_benchmark.py --cfg 5 --nfe 4 --per-prompt 16

The model is the guided benchmark mixture (``GaussianMixtureDenoiser.close_modes(prompts=True)``:
16 components in 8 close pairs, each pair one prompt's, 4x32x32, SD1.5 sigmas) under
classifier-free guidance as ComfyUI computes it. Two fits at the Distill node's defaults:

* "several": ``distill(..., prompts=8)``: trained on the prompts at even positions (0, 2, 4, 6),
  its validation seeds going round all 8, so 1, 3, 5, 7 are prompts it never trained on;
* "one": ``distill`` on prompt ``--single`` alone, as the node fits one conditioning.

Both are then run on ``--per-prompt`` held-out seeds of every prompt (seeds no fit saw) and
compared with a float64 reference (the refined teacher from 128 steps). Per-sample error: RMSE
of one sample to the reference. The table gives the mean on the training prompts' seeds and on
the held-out prompts' seeds ("trained" and "held-out": the several-prompt fit's halves, for every
row), the best built-in solver x schedule on the held-out prompts (chosen there: the strongest
floor there is) on both, the "far" share (held-out seeds above 3x that pair's median error:
another mode), the held-out mean over the pair's ("vs pair"), the model calls of each fit
(without / with gradients), and each one's mean per prompt: the prompts' pairs have different
widths, so some prompts are harder than others for every solver.
"""

from __future__ import annotations

import argparse
import time

import torch

from learned_solvers.distill import NoiseLevels, distill, refine_teacher, start_states
from learned_solvers.distill.prompts import PerSample, split_prompts
from learned_solvers.learned_samplers import BASE_SOLVERS, GaussianMixtureDenoiser, sample_learned
from learned_solvers.schedules import builtin_schedules, discrete_vp_sigmas

SD15 = discrete_vp_sigmas()
FAR = 3.0


def errors_of(out, reference):
    return (out.double() - reference.double()).flatten(1).pow(2).mean(1).sqrt()


def returned(fit) -> str:
    """What a fit returned: the pair it started from + learned, the trajectory grid, or the pair."""
    start = fit.start or fit.floor
    return {"builtin": f"{fit.floor['base']} + {fit.floor['schedule']}", "trajectory": f"{fit.base} + trajectory"}.get(
        fit.method, f"{start['base']} + {start['schedule']} + learned")


def run_on(model, start, prompt_of, sigmas, batch=64, **options):
    """A solver's results for ``start`` [S, ...], each seed with its prompt (``prompt_of`` [S])."""
    outs = []
    with torch.no_grad():
        for first in range(0, len(start), batch):
            rows = slice(first, first + batch)
            outs.append(sample_learned(model, start[rows], sigmas.to(start.dtype), {"prompt": prompt_of[rows]},
                                       disable=True, **options))
    return torch.cat(outs)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cfg", type=float, default=7.0)
    parser.add_argument("--nfe", type=int, nargs="+", default=[4, 6])
    parser.add_argument("--prompts", type=int, default=8, help="prompts of the mixture the several-prompt fit gets")
    parser.add_argument("--per-prompt", type=int, default=32, help="held-out seeds per prompt")
    parser.add_argument("--single", type=int, default=0, help="the one-prompt fit's prompt")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="fit seeds (FitSettings.seed: the training noises and the fit's draws); with several, "
                             "a last line per NFE gives each fit's means over them")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    shape = (4, 32, 32)
    mixture = GaussianMixtureDenoiser.close_modes(shape=shape, prompts=True)
    if not 2 <= args.prompts <= mixture.prompts:
        parser.error(f"--prompts must be 2..{mixture.prompts}")
    model = mixture.guided(args.single, args.cfg)  # the prompt keyword overrides its prompt
    split = split_prompts(args.prompts)
    sigma_min, sigma_max = float(SD15[0]), float(SD15[-1])
    count = args.prompts * args.per_prompt
    held = start_states(shape, count, sigma_max, "ve", seed=10_000)
    prompt_of = torch.arange(count) % args.prompts
    began = time.perf_counter()
    reference = refine_teacher(model.to(dtype=torch.float64), held.double(), 128,
                               levels=NoiseLevels(sigma_min, sigma_max), batch_size=64,
                               extra_args={"prompt": PerSample(prompt_of)})
    trained = torch.isin(prompt_of, torch.tensor(split.training))
    print(f"## guided hard mixture, CFG {args.cfg:g}: several = trained on prompts {list(split.training)}, "
          f"one = trained on prompt {args.single}; {args.per_prompt} held-out seeds per prompt; reference residual "
          f"{reference.residual:.5f}, {int((~reference.settled).sum())} unsettled "
          f"({time.perf_counter() - began:.0f} s)")
    print(f"{'NFE':>4} {'best pair on held-out prompts':<30} {'trained':>7} {'held-out':>8} {'far':>5}   {'fit':<8} "
          f"{'trained':>7} {'held-out':>8} {'ratio':>5} {'far':>5} {'vs pair':>7} {'calls':>13} {'time':>5}  returned")
    schedules = builtin_schedules(sigma_min, sigma_max, "ve", SD15)
    for n in args.nfe:
        pairs = {}
        for base in BASE_SOLVERS:
            for name, grid in schedules.items():
                errors = errors_of(run_on(model, held, prompt_of, grid(n), base=base), reference.final)
                pairs[f"{base} + {name}"] = errors
        best_name, best = min(pairs.items(), key=lambda item: float(item[1][~trained].mean()))
        best_held = best[~trained]
        far_limit = FAR * float(best_held.median())
        pair_text = (f"{best_name:<30} {best[trained].mean():>7.4f} {best_held.mean():>8.4f} "
                     f"{(best_held > far_limit).double().mean():>5.1%}")
        per_prompt, over_seeds = {"pair": best}, {}
        for seed, label, prompts in [(seed, label, prompts) for seed in args.seeds
                                     for label, prompts in (("several", args.prompts), ("one", None))]:
            fit_began = time.perf_counter()
            solver = distill(model, shape,
                             levels=NoiseLevels(sigma_min, sigma_max, convention="ve", sigma_table=SD15),
                             nfe=[n], prompts=prompts, seed=seed)
            seconds = time.perf_counter() - fit_began
            errors = errors_of(run_on(model, held, prompt_of, solver.sigmas(n), **solver.sampler_options(n)),
                               reference.final)
            on_trained, on_held = float(errors[trained].mean()), float(errors[~trained].mean())
            made = solver.provenance["cost"]["calls"]
            over_seeds.setdefault(label, []).append((on_trained, on_held))
            label = label if len(args.seeds) == 1 else f"{label} s{seed}"
            print(f"{n:>4} {pair_text}   {label:<8} {on_trained:>7.4f} {on_held:>8.4f} {on_held / on_trained:>5.2f} "
                  f"{(errors[~trained] > far_limit).double().mean():>5.1%} {on_held / float(best_held.mean()):>7.2f} "
                  f"{made['inference']:>7,}/{made['gradient']:<5,} {seconds:>4.0f}s  {returned(solver.fits[n])}", flush=True)
            pair_text = " " * len(pair_text)
            per_prompt[label] = errors
        for label, errors in per_prompt.items():
            means = " ".join(f"{float(errors[prompt_of == p].mean()):.3f}" for p in range(args.prompts))
            print(f"     mean per prompt 0-{args.prompts - 1}, {label}: {means}")
        if len(args.seeds) > 1:
            means = {label: torch.tensor(rows, dtype=torch.float64).mean(0) for label, rows in over_seeds.items()}
            print(f"     over {len(args.seeds)} seeds, trained / held-out / ratio: " + "; ".join(
                f"{label} {m[0]:.4f} / {m[1]:.4f} / {m[1] / m[0]:.2f}" for label, m in means.items()))


if __name__ == "__main__":
    main()
