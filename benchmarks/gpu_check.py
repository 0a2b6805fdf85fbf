"""One prepared check of the Distill and SFD nodes on real architectures: time, calls and memory.

    COMFYUI_PATH=/path/to/ComfyUI python benchmarks/gpu_check.py --out gpu_out            # on a GPU
    COMFYUI_PATH=/path/to/ComfyUI python benchmarks/gpu_check.py --device meta            # no GPU: estimates
    COMFYUI_PATH=/path/to/ComfyUI python benchmarks/gpu_check.py --models tiny --device cpu --budget-s 60

For each model (SD1.5 at 512², SDXL and Flux-dev at 1024², random bf16 weights built by ComfyUI's
own classes, ``comfyui_memory.build``; ``tiny``: the tests' tiny SD1.5-architecture UNet at 64²)
it runs the Distill Sampler's fit as the node does (``hosts.comfyui.fitting.distill_model``), NFE
4, CFG 7 (Flux: CFG 1, its guidance 3.5), with fewer seeds and steps than the node's defaults
(``SHORT``) so that three models fit in a few minutes (each fit is stopped at its share of the
budget, and says so), and records per phase (teacher, floor,
fit, selection) the wall time, the model calls and the peak memory; from the measured seconds
per call it projects the node's run at its full defaults (the calls of ``cost.planned_calls``
and the teacher's, with as many seeds refined as in the short run). Then a short SFD fit
(``--sfd-iterations`` steps), timed per iteration, projected to SFD's defaults.

It prints progress, stops before ``--budget-s`` (a model whose share of the time is gone is
skipped, not started), and writes ``gpu_check.json`` and ``gpu_check.md`` into ``--out``
(default ``$OUT``, else ``./gpu_out``). ``--device meta`` builds the same networks on PyTorch's
meta device and prints the same table from the per-call times of the first version's H200
measurements and the call counts, every figure marked "estimated".
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

RESOLUTION = {"sd15": 512, "sdxl": 1024, "flux": 1024, "tiny": 64}
# the short fit: the node's defaults with fewer seeds, steps and base solvers, and a smaller
# divergence screen (SHORT_SCREEN). Its runs without gradients batch the 8 seeds at once, as the
# node's memory plan does ("model calls"; 2 with "blocks")
SHORT = dict(samples=4, validation=4, iterations=4, teacher_steps=16, base="dpmpp_2m")
SHORT_SCREEN = 8
# seconds per sample-call (a CFG pair, one sample) measured on an H200 with the first version:
# what --device meta projects from (README: "What a fit costs")
H200_CALL_SECONDS = {"sd15": 0.052, "sdxl": 0.068, "flux": 0.349, "tiny": 0.001}
PHASES = ("teacher", "floor", "fit", "selection")


def case(name: str, device):
    """(ModelPatcher, positive, negative, cfg, latent) for ``name``."""
    if name == "tiny":
        from comfyui_models import tiny_conditioning, tiny_model

        positive, negative = tiny_conditioning()
        return tiny_model("eps"), positive, negative, 7.0, {"samples": torch.zeros(1, 4, 8, 8)}
    from comfyui_memory import CASES, build

    patcher, positive, negative, cfg = build(name, device)
    size = RESOLUTION[name] // 8
    return patcher, positive, negative, cfg, {"samples": torch.zeros(1, CASES[name][2], size, size)}


class PhaseMemory:
    """Within: the peak memory of each fit phase (``cost.CallCounter.phase``), GiB, on a CUDA device."""

    def __init__(self, device):
        self.device, self.peaks = device, {}

    def _boundary(self, running):
        if self.device.type != "cuda":
            return
        peak = torch.cuda.max_memory_allocated(self.device) / 2 ** 30
        if running:
            self.peaks[running] = max(self.peaks.get(running, 0.0), peak)
        torch.cuda.reset_peak_memory_stats(self.device)

    @contextlib.contextmanager
    def tracking(self):
        from learned_solvers.distill import cost

        original, memory = cost.CallCounter.phase, self

        @contextlib.contextmanager
        def phase(counter, name):
            memory._boundary(counter.current)
            with original(counter, name):
                try:
                    yield counter
                finally:
                    memory._boundary(name)

        cost.CallCounter.phase = phase
        try:
            yield self
        finally:
            cost.CallCounter.phase = original


def per_call_seconds(phases: dict) -> tuple:
    """(seconds per call without gradients, per call with gradients and their backward) from a
    fit's cost phases: the teacher, floor and selection set the first, the fit's own time less
    its validation runs the second."""
    inference = sum(phases.get(p, {}).get("inference", 0) for p in ("teacher", "floor", "selection"))
    seconds = sum(phases.get(p, {}).get("seconds", 0.0) for p in ("teacher", "floor", "selection"))
    per_inference = seconds / inference if inference else float("nan")
    fit = phases.get("fit", {})
    own = fit.get("seconds", 0.0) - per_inference * fit.get("inference", 0)
    per_gradient = own / fit["gradient"] if fit.get("gradient") else float("nan")
    return per_inference, per_gradient


def full_calls(patcher, refined_share: float, steps: int = 4) -> dict:
    """The node's calls at its full defaults, NFE ``steps``, for this model: the teacher's two
    levels and ``refined_share`` of its seeds refined once, and ``cost.planned_calls``."""
    from learned_solvers.distill import FitSettings
    from learned_solvers.distill.cost import planned_calls
    from learned_solvers.distill.pipeline import (CORRECTION_SAMPLES, FLOOR_FINALISTS, FLOOR_PROBES,
                                                  FLOOR_SHORTLIST, SCREEN_SAMPLES, candidate_schedules)
    from learned_solvers.distill.scoring import builtin_pairs
    from learned_solvers.hosts.comfyui.fitting import host_facts
    from learned_solvers.learned_samplers import BASE_SOLVERS

    _, levels = host_facts(patcher)
    pairs = builtin_pairs(candidate_schedules("auto", levels), steps, BASE_SOLVERS, levels)
    s = FitSettings(use_checkpoint=True)
    seeds = s.samples + s.validation
    teacher = seeds * (s.teacher_steps // 2 + s.teacher_steps) + round(refined_share * seeds) * 2 * s.teacher_steps
    plan = planned_calls(s, nfe=steps, pairs=len(pairs), own_pairs=len(BASE_SOLVERS), corrections=CORRECTION_SAMPLES,
                         probes=FLOOR_PROBES, shortlist=FLOOR_SHORTLIST, finalists=FLOOR_FINALISTS,
                         screen=SCREEN_SAMPLES)
    return {"inference": plan["inference"] + teacher, "gradient": plan["gradient"]}


def check_distill(name: str, built: tuple, device, say, deadline: float) -> dict:
    """The short Distill fit of ``name``: per phase seconds, calls and peak GiB, and the
    projection; stopped (and so recorded) where it runs past ``deadline`` (time.monotonic())."""
    from learned_solvers.distill import pipeline
    from learned_solvers.distill import RunHooks
    from learned_solvers.distill.fit import FitCancelled
    from learned_solvers.hosts.comfyui.fitting import distill_model

    patcher, positive, negative, cfg, latent = built
    memory = PhaseMemory(device)
    began = time.perf_counter()
    screen, pipeline.SCREEN_SAMPLES = pipeline.SCREEN_SAMPLES, SHORT_SCREEN
    try:
        with memory.tracking():
            hooks = RunHooks(progress=lambda step, total, *_: say(f"  {name} distill {step}/{total}"),
                             cancel=lambda: time.monotonic() > deadline)
            solver = distill_model(patcher, positive, negative, latent, cfg, nfe=[4], hooks=hooks, **SHORT)
    except FitCancelled:
        return {"stopped": f"its share of the budget ran out after {time.perf_counter() - began:.0f} s"}
    finally:
        pipeline.SCREEN_SAMPLES = screen
    seconds = time.perf_counter() - began
    cost = solver.provenance["cost"]
    per_inference, per_gradient = per_call_seconds(cost["phases"])
    teacher = solver.provenance["teacher"]
    refined = teacher.get("refined", 0) / (SHORT["samples"] + SHORT["validation"])
    full = full_calls(patcher, refined)
    projected = full["inference"] * per_inference + full["gradient"] * per_gradient
    phases = {p: {"seconds": round(cost["phases"].get(p, {}).get("seconds", 0.0), 2),
                  "calls": {k: v for k, v in cost["phases"].get(p, {}).items() if k != "seconds"},
                  "peak_gib": round(memory.peaks[p], 2) if p in memory.peaks else None} for p in PHASES}
    return {"seconds": round(seconds, 1), "phases": phases, "per_call_ms": {
        "inference": round(1000 * per_inference, 2), "gradient": round(1000 * per_gradient, 2)},
        "memory": solver.provenance.get("memory"), "full_calls": full, "projected_full_s": round(projected, 0)}


def check_sfd(name: str, built: tuple, device, iterations: int, say, deadline: float) -> dict:
    """A short SFD fit of ``name``: seconds per iteration, projected to SFD's default iterations."""
    from learned_solvers.distill import RunHooks
    from learned_solvers.distill.sfd import SfdSettings
    from learned_solvers.hosts.comfyui.fitting import distill_network_model

    patcher, positive, negative, cfg, latent = built
    stamps = []

    def progress(step, total, loss, *_):
        if loss == loss:
            stamps.append(time.perf_counter())
        say(f"  {name} sfd {step}/{total}")

    from learned_solvers.distill.fit import FitCancelled

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    began = time.perf_counter()
    try:
        distill_network_model(patcher, positive, negative, latent, cfg, nfe=2, iterations=iterations, samples=4,
                              validation=2, teacher_steps=8,
                              hooks=RunHooks(progress=progress, cancel=lambda: time.monotonic() > deadline))
    except FitCancelled:
        return {"stopped": f"its share of the budget ran out after {time.perf_counter() - began:.0f} s"}
    seconds = time.perf_counter() - began
    gaps = sorted(b - a for a, b in zip(stamps, stamps[1:]))
    per_iteration = gaps[len(gaps) // 2] if gaps else float("nan")
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None
    return {"seconds": round(seconds, 1), "per_iteration_s": round(per_iteration, 3),
            "projected_iterations_s": round(per_iteration * SfdSettings().iterations, 0),
            "peak_gib": round(peak, 2) if peak is not None else None}


def estimated(name: str) -> dict:
    """--device meta: the full-default calls of the network built on the meta device, at the
    first version's H200 seconds per call (a counted gradient call, checkpointed as the node
    runs it, at ``cost.GRADIENT_CALL_COST[True]`` of them)."""
    import comfy.model_patcher

    from learned_solvers.distill.cost import GRADIENT_CALL_COST

    from comfyui_memory import model_config

    meta = torch.device("meta")
    model = model_config(name).get_model({}, device=meta) if name != "tiny" else None
    if model is None:
        from comfyui_models import tiny_model

        patcher = tiny_model("eps")
    else:
        patcher = comfy.model_patcher.ModelPatcher(model, load_device=meta, offload_device=meta)
    full = full_calls(patcher, 0.1)
    per, gradient = H200_CALL_SECONDS[name], GRADIENT_CALL_COST[True] * H200_CALL_SECONDS[name]
    return {"estimated": True, "full_calls": full,
            "per_call_ms": {"inference": 1000 * per, "gradient": 1000 * gradient},
            "projected_full_s": round(full["inference"] * per + full["gradient"] * gradient, 0)}


def table(results: dict, device_name: str) -> str:
    """The markdown table of ``results`` (model -> its record)."""
    lines = [f"Device: {device_name}; Distill: NFE 4, CFG 7 (Flux CFG 1, guidance 3.5), short fit {SHORT}; "
             f"'estimated' rows come from per-call times, not a run.", "",
             "| model | what | teacher s | floor s | fit s | selection s | ms / call (no grad / grad) | peak GiB "
             "(teacher / fit) | node defaults, projected |", "|---|---|---|---|---|---|---|---|---|"]
    for name, record in results.items():
        if "skipped" in record:
            lines.append(f"| {name} | skipped: {record['skipped']} | | | | | | | |")
            continue
        lines.append(_distill_row(name, record["distill"]))
        if record.get("sfd"):
            lines.append(_sfd_row(name, record["sfd"]))
    return "\n".join(lines) + "\n"


def _distill_row(name: str, distill: dict) -> str:
    if "stopped" in distill:
        return f"| {name} | distill stopped: {distill['stopped']} | | | | | | | |"
    ms = distill["per_call_ms"]
    if distill.get("estimated"):
        return (f"| {name} | distill, estimated | | | | | {ms['inference']:.0f} / {ms['gradient']:.0f} | | "
                f"about {distill['projected_full_s'] / 60:.0f} min (estimated) |")
    phases = distill["phases"]
    peaks = "/".join("-" if phases[p]["peak_gib"] is None else f"{phases[p]['peak_gib']:.1f}" for p in ("teacher", "fit"))
    return (f"| {name} | distill ({distill['memory']}) | " + " | ".join(f"{phases[p]['seconds']:.1f}" for p in PHASES)
            + f" | {ms['inference']:.1f} / {ms['gradient']:.1f} | {peaks} | {distill['projected_full_s'] / 60:.1f} min |")


def _sfd_row(name: str, sfd: dict) -> str:
    if "stopped" in sfd:
        return f"| {name} | SFD stopped: {sfd['stopped']} | | | | | | | |"
    return (f"| {name} | SFD, {sfd['per_iteration_s']:.2f} s / iteration | | | {sfd['seconds']:.1f} | | | "
            f"{'-' if sfd['peak_gib'] is None else sfd['peak_gib']} | "
            f"{sfd['projected_iterations_s'] / 60:.1f} min of iterations |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["sd15", "sdxl", "flux"], choices=list(RESOLUTION))
    parser.add_argument("--device", default="cuda", help="cuda (measured), cpu (measured, slow) or meta (estimated)")
    parser.add_argument("--budget-s", type=float, default=480.0, help="stop before this many seconds have passed")
    parser.add_argument("--sfd-iterations", type=int, default=3)
    parser.add_argument("--out", default=os.environ.get("OUT") or "gpu_out")
    args = parser.parse_args(argv)
    began = time.monotonic()
    from comfyui_memory import import_comfyui

    import_comfyui()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run with --device meta for the estimated table", file=sys.stderr)
        return 2
    if device.type in ("cpu", "meta"):
        import comfy.cli_args

        comfy.cli_args.args.cpu = True
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    last = {"shown": 0.0}

    def say(text, force=False):
        if force or time.monotonic() - last["shown"] > 5:
            last["shown"] = time.monotonic()
            print(f"[{time.monotonic() - began:5.0f} s] {text}", flush=True)

    results = {}
    for index, name in enumerate(args.models):
        left = args.budget_s - (time.monotonic() - began)
        share = left / (len(args.models) - index)
        if device.type != "meta" and share < 0.25 * args.budget_s / len(args.models):
            results[name] = {"skipped": f"{left:.0f} s of the budget left"}
            say(f"{name}: skipped, {left:.0f} s left", force=True)
            continue
        say(f"{name}: starting ({left:.0f} s of the budget left)", force=True)
        try:
            if device.type == "meta":
                results[name] = {"distill": estimated(name)}
            else:  # the Distill fit may take 3/4 of this model's share, SFD the rest
                start, built = time.monotonic(), case(name, device)  # built once: its weights serve both fits
                results[name] = {"distill": check_distill(name, built, device, say, start + 0.75 * share)}
                results[name]["sfd"] = check_sfd(name, built, device, args.sfd_iterations, say, start + share)
                del built
        except torch.OutOfMemoryError:
            results[name] = {"skipped": "out of memory"}
        say(f"{name}: done", force=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps({"device": device_name, "torch": torch.__version__,
                                                    "budget_s": args.budget_s, "results": results}, indent=1,
                                                   default=lambda v: None if isinstance(v, float) and
                                                   not math.isfinite(v) else str(v)))
    text = table(results, device_name)
    (out / "gpu_check.md").write_text(text)
    print(text)
    print(f"wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'} ({time.monotonic() - began:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
