"""Command line: ``python -m learned_solvers <command>``.

``demo``: distill a few-step solver for the shipped test UNet, print it against every
classical solver x schedule on held-out seeds, and write a PNG of the learned grid and samples.
``compare``: sample the exact Gaussian-mixture denoiser (SD-latent sized, SD1.5 sigma range)
with every base solver on classical grids and print each one's RMSE to the ODE's solution.

Learned-solver files: ``inspect`` (metadata, fits, and a PNG of the grid against karras/AYS),
``validate`` (exit status 1 if any file is invalid), ``export`` (a plain sigma list for any UI
that takes custom sigmas), ``pull`` and ``push`` (the Hugging Face Hub).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from .learned_samplers import BASE_SOLVERS, GaussianMixtureDenoiser, sample_learned
from .schedules import exponential, karras, sd15_schedules

SD15_SIGMA_MIN, SD15_SIGMA_MAX = 0.0291675, 14.6146412  # SD1.x's discrete schedule range

GRIDS = {
    "karras": lambda n: karras(n, SD15_SIGMA_MIN, SD15_SIGMA_MAX, final_zero=True),
    "exponential": lambda n: exponential(n, SD15_SIGMA_MIN, SD15_SIGMA_MAX, final_zero=True),
}


def compare(nfes, samples: int, seed: int, reference_steps: int, out=sys.stdout) -> dict:
    """RMSE to the reference ODE solution for each (base, grid, NFE); returns the table."""
    model = GaussianMixtureDenoiser.power_law(shape=(4, 32, 32), seed=seed, dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed + 1)
    x = SD15_SIGMA_MAX * torch.randn(samples, *model.shape, generator=gen, dtype=torch.float64)
    start = time.perf_counter()
    reference = sample_learned(model, x, GRIDS["exponential"](reference_steps), base="dpmpp_3m", disable=True)
    print(f"reference: dpmpp_3m, {reference_steps} steps, {time.perf_counter() - start:.1f} s", file=out)
    table = {}
    header = f"{'base':<10} {'grid':<12}" + "".join(f"{'NFE ' + str(n):>10}" for n in nfes)
    print(header, file=out)
    for base in BASE_SOLVERS:
        for grid_name, grid in GRIDS.items():
            row = []
            for nfe in nfes:
                result = sample_learned(model, x, grid(nfe), base=base, disable=True)
                rmse = (result - reference).pow(2).mean().sqrt().item()
                table[(base, grid_name, nfe)] = rmse
                row.append(rmse)
            print(f"{base:<10} {grid_name:<12}" + "".join(f"{v:>10.4f}" for v in row), file=out)
    return table


def demo(nfe: int, method: str, iterations: int, seed: int, out_path: str, use_mixture: bool, out=sys.stdout,
         save: str | None = None):
    """Distill, compare on held-out seeds, write the PNG (and, with ``save``, the learned-solver
    file); returns (learned RMSE, best classical RMSE)."""
    from .distill import distill, start_states
    from .schedules.plot import plot_grids, sample_sheet, stack_vertically

    began = time.perf_counter()
    if use_mixture:
        model = GaussianMixtureDenoiser.power_law(shape=(3, 32, 32), seed=seed)
        name = "exact Gaussian mixture (3x32x32)"
    else:
        from .testmodel import load_test_unet

        model = load_test_unet()
        name = "shipped TinyUNet (3x32x32, eps model on SD1.5 sigmas)"
    shape = (3, 32, 32)
    grids = sd15_schedules()

    def run(start, sigmas, base, **options):
        with torch.no_grad():
            return sample_learned(model, start, sigmas.to(start.dtype), base=base, disable=True, **options)

    teacher_grid = exponential(48, SD15_SIGMA_MIN, SD15_SIGMA_MAX, final_zero=True)
    probe = start_states(shape, 16, SD15_SIGMA_MAX, "ve", seed=seed)
    probe_teacher = run(probe, teacher_grid, "dpmpp_3m")
    rmse = lambda a, b: (a.double() - b.double()).pow(2).mean().sqrt().item()  # noqa: E731
    pairs = [(b, g) for b in BASE_SOLVERS for g in grids]
    init_base, init_grid = min(pairs, key=lambda p: rmse(run(probe, grids[p[1]](nfe), p[0]), probe_teacher))
    print(f"{name}: NFE {nfe}, starting from the best built-in pair on training seeds: "
          f"{init_base} + {init_grid}", file=out)
    solver = distill(model, shape, sigma_min=SD15_SIGMA_MIN, sigma_max=SD15_SIGMA_MAX, nfe=[nfe], method=method,
                     base=init_base, init_sigmas=grids[init_grid], samples=40, validation=16, seed=seed,
                     iterations=iterations, teacher_steps=32, convention="ve",
                     progress=lambda step, total, loss, held: print(
                         f"\r  fitting {step}/{total}  loss {loss:.4f}  validation RMSE {held:.4f}", end="", file=out))
    print(file=out)
    held = start_states(shape, 32, SD15_SIGMA_MAX, "ve", seed=seed + 10_000)
    teacher = run(held, teacher_grid, "dpmpp_3m")
    scores = {f"{b} + {g}": rmse(run(held, grids[g](nfe), b), teacher) for b, g in pairs}
    learned = solver.sample(model, held, nfe)
    learned_rmse = rmse(learned, teacher)
    ranked = sorted(scores.items(), key=lambda item: item[1])
    print(f"\nRMSE to the teacher (dpmpp_3m, 48 steps) on 32 held-out seeds, NFE {nfe}:", file=out)
    for label, value in ranked[:5]:
        print(f"  {label:<26} {value:.4f}", file=out)
    print(f"  {'... ' + str(len(ranked) - 5) + ' more built-in pairs':<26}", file=out)
    fit = solver.fits[nfe]
    print(f"  {'learned (' + fit.method + ')':<26} {learned_rmse:.4f}   "
          f"= {learned_rmse / ranked[0][1]:.2f} x the best built-in; fit {fit.fit_seconds:.0f} s", file=out)
    best_base, best_grid = ranked[0][0].split(" + ")
    picture = stack_vertically([
        plot_grids({"learned": solver.sigmas(nfe), "karras": grids["karras"](nfe), "ays": grids["ays"](nfe),
                    "exponential": grids["exponential"](nfe)}, title=f"{name}: sigma per step, NFE {nfe}"),
        sample_sheet({"teacher": teacher[:6], f"{best_base}+{best_grid}": run(held[:6], grids[best_grid](nfe), best_base),
                      "2m+karras": run(held[:6], grids["karras"](nfe), "dpmpp_2m"), "learned": learned[:6]}, scale=3),
    ])
    picture.save(out_path)
    if save:
        from .schedules import save_learned_solver

        description = (f"Fitted by `python -m learned_solvers demo --nfe {nfe} --iterations {iterations} --seed {seed}"
                       f"{' --mixture' if use_mixture else ''}` on the {name}; held-out RMSE {learned_rmse:.4f} against "
                       f"{ranked[0][1]:.4f} for the best built-in pair ({ranked[0][0]}).")
        written = save_learned_solver(solver, save, {"model_family": "TinyUNet" if not use_mixture else "mixture",
                                                     "prediction": "EPS", "description": description,
                                                     "license": "MIT", "author": "learned-solvers"})
        print(f"wrote {written}", file=out)
    print(f"wrote {out_path}  ({time.perf_counter() - began:.0f} s in all)", file=out)
    return learned_rmse, ranked[0][1]


def inspect_file(path: str, png: str | None, out=None) -> int:
    """Print a file's metadata and fits; with ``png``, draw each NFE's grid against karras/AYS."""
    out = out or sys.stdout
    import json

    from .schedules import load_learned_solver, read_metadata, reference_schedules
    from .schedules.plot import plot_grids, stack_vertically

    solver = load_learned_solver(path)
    metadata = read_metadata(path)
    print(f"{path}: learned solver, format {metadata['format_version']}", file=out)
    for key in ("method", "base", "convention", "corrector", "nfes", "sigma_min", "sigma_max", "model_family",
                "prediction", "shift", "fingerprint", "cfg", "resolution", "author", "description", "license",
                "package_version"):
        if key in metadata:
            print(f"  {key:<16} {metadata[key]}", file=out)
    teacher = json.loads(metadata.get("provenance", "{}")).get("teacher")
    if teacher:
        print(f"  {'teacher':<16} {teacher.get('base')}, {teacher.get('steps')} steps", file=out)
    print(solver.summary(), file=out)
    for nfe in solver.nfes:
        print(f"  NFE {nfe} sigmas: " + ", ".join(f"{float(s):.6g}" for s in solver.sigmas(nfe)), file=out)
    if png:
        pictures = [plot_grids({"learned": solver.sigmas(nfe), **reference_schedules(nfe, *solver.sigma_range)},
                               title=f"{os.path.basename(path)}: NFE {nfe}") for nfe in solver.nfes]
        stack_vertically(pictures).save(png)
        print(f"wrote {png}", file=out)
    return 0


def validate_files(paths, out=None) -> int:
    """One line per file, ``ok`` or the reason it is refused; 1 if any is invalid."""
    out = out or sys.stdout
    from .schedules import LearnedSolverFileError, load_learned_solver

    failed = 0
    for path in paths:
        try:
            solver = load_learned_solver(path)
        except LearnedSolverFileError as err:
            failed += 1
            print(f"invalid  {err}", file=out)
        else:
            print(f"ok       {path}: {solver.method} on {solver.base}, NFE {', '.join(map(str, solver.nfes))}",
                  file=out)
    return 1 if failed else 0


def export_sigmas(path: str, steps: int, denoise: float, sigma_range, style: str, out=None) -> int:
    """Print the grid for ``steps`` model calls as a plain list; warnings go to stderr."""
    out = out or sys.stdout
    import json

    from .schedules import load_learned_solver

    solver = load_learned_solver(path)
    sigmas, warnings = solver.schedule(steps, denoise, sigma_range=tuple(sigma_range) if sigma_range else None)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    values = [float(s) for s in sigmas]
    if style == "json":
        print(json.dumps(values), file=out)
    else:
        print(", ".join(f"{v:.6g}" for v in values), file=out)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m learned_solvers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    dem = commands.add_parser("demo", help="distill a solver for the shipped test UNet and write a PNG")
    dem.add_argument("--nfe", type=int, default=4)
    dem.add_argument("--method", default="auto", choices=["auto", "dode", "ld3", "s4s", "s4s_alt"])
    dem.add_argument("--iterations", type=int, default=100)
    dem.add_argument("--seed", type=int, default=0)
    dem.add_argument("--out", default="learned_solver_demo.png")
    dem.add_argument("--mixture", action="store_true", help="use the exact Gaussian mixture instead of the UNet")
    dem.add_argument("--save", help="also write the learned solver to this .safetensors file")
    cmp = commands.add_parser("compare", help="base solvers x grids on the exact mixture denoiser")
    cmp.add_argument("--nfe", type=int, nargs="+", default=[4, 5, 6, 8, 10])
    cmp.add_argument("--samples", type=int, default=16)
    cmp.add_argument("--seed", type=int, default=0)
    cmp.add_argument("--reference-steps", type=int, default=500)
    ins = commands.add_parser("inspect", help="a learned-solver file's metadata and fits, optionally a PNG")
    ins.add_argument("file")
    ins.add_argument("--png", help="write the grids against karras/exponential/AYS to this PNG")
    val = commands.add_parser("validate", help="check learned-solver files; exit status 1 if any is invalid")
    val.add_argument("files", nargs="+")
    exp = commands.add_parser("export", help="print a file's sigmas as a plain list (custom sigmas in any UI)")
    exp.add_argument("file")
    exp.add_argument("--steps", type=int, help="model calls (default: the first fitted NFE)")
    exp.add_argument("--denoise", type=float, default=1.0)
    exp.add_argument("--sigma-range", type=float, nargs=2, metavar=("MIN", "MAX"),
                     help="another model's sigma range: remap the grid to it")
    exp.add_argument("--format", choices=["list", "json"], default="list")
    pul = commands.add_parser("pull", help="download a learned-solver file from the Hugging Face Hub, validated")
    pul.add_argument("repo_id", help="e.g. someone/solvers")
    pul.add_argument("filename", help="e.g. sdxl_cfg5_nfe6.safetensors")
    pul.add_argument("--revision")
    pul.add_argument("--dest", default=None, help="folder (default: $COMFYUI_PATH/models/learned_solvers if "
                                                  "COMFYUI_PATH is set, else the current folder)")
    pul.add_argument("--offline", action="store_true", help="only the local Hugging Face cache")
    psh = commands.add_parser("push", help="upload a learned-solver file (and a model card) to the Hub")
    psh.add_argument("file")
    psh.add_argument("repo_id")
    psh.add_argument("--path-in-repo")
    psh.add_argument("--private", action="store_true")
    psh.add_argument("--no-card", action="store_true", help="do not write README.md")
    args = parser.parse_args(argv)
    if args.command in ("inspect", "validate", "export", "pull", "push"):
        return files_command(args, parser)
    if args.command == "demo":
        if args.nfe < 2:
            parser.error("--nfe must be at least 2")
        demo(args.nfe, args.method, args.iterations, args.seed, args.out, args.mixture, save=args.save)
    if args.command == "compare":
        if min(args.nfe) < 1:
            parser.error("--nfe values must be >= 1")
        compare(args.nfe, args.samples, args.seed, args.reference_steps)
    return 0


def files_command(args, parser) -> int:
    from .schedules import LearnedSolverFileError
    from .schedules.hub import SharingError, pull_learned_solver, push_learned_solver

    try:
        if args.command == "inspect":
            return inspect_file(args.file, args.png)
        if args.command == "validate":
            return validate_files(args.files)
        if args.command == "export":
            from .schedules import read_metadata

            steps = args.steps or int(read_metadata(args.file)["nfes"].split(",")[0])
            if steps < 1 or not 0 < args.denoise <= 1:
                parser.error("--steps must be >= 1 and --denoise in (0, 1]")
            return export_sigmas(args.file, steps, args.denoise, args.sigma_range, args.format)
        if args.command == "pull":
            dest = args.dest or (os.path.join(os.environ["COMFYUI_PATH"], "models", "learned_solvers")
                                 if os.environ.get("COMFYUI_PATH") else ".")
            path = pull_learned_solver(args.repo_id, args.filename, dest, revision=args.revision,
                                       local_files_only=args.offline)
            print(f"pulled {path}")
            return 0
        url = push_learned_solver(args.file, args.repo_id, path_in_repo=args.path_in_repo, private=args.private,
                                  card=not args.no_card)
        print(f"pushed {url}")
        return 0
    except (LearnedSolverFileError, SharingError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
