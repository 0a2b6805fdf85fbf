"""Time and peak GPU memory of the Distill Sampler's fit on real architectures (random weights).

    COMFYUI_PATH=/path/to/ComfyUI python benchmarks/comfyui_memory.py
    COMFYUI_PATH=/path/to/ComfyUI python benchmarks/comfyui_memory.py --cases sdxl@1024 --modes blocks

Builds SD1.5, SDXL and Flux-dev through ComfyUI's own model classes with random bf16 weights
(time and memory do not depend on the values), with conditioning shaped like their text
encoders' (SD1.5 and SDXL with a CFG pair, Flux at CFG 1 with its embedded guidance), and runs
``distill_model`` exactly as the Distill Sampler node does, with a short fit: one sample per
gradient step, NFE 5 (five unrolled model calls per step). It prints the weights' size, the
peak memory allocated while recording the teacher and during the gradient steps, the seconds
per teacher model call and per gradient step, for each memory mode.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import torch

CASES = {  # name: (ComfyUI config class, its unet_config, latent channels)
    "sd15": ("SD15", {
        "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
        "legacy": False, "adm_in_channels": None, "in_channels": 4, "model_channels": 320,
        "num_res_blocks": [2, 2, 2, 2], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
        "channel_mult": [1, 2, 4, 4], "transformer_depth_middle": 1, "use_linear_in_transformer": False,
        "context_dim": 768, "num_heads": 8, "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
        "use_temporal_attention": False, "use_temporal_resblock": False}, 4),
    "sdxl": ("SDXL", {
        "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
        "legacy": False, "num_classes": "sequential", "adm_in_channels": 2816, "in_channels": 4,
        "model_channels": 320, "num_res_blocks": [2, 2, 2], "transformer_depth": [0, 0, 2, 2, 10, 10],
        "channel_mult": [1, 2, 4], "transformer_depth_middle": 10, "use_linear_in_transformer": True,
        "context_dim": 2048, "num_head_channels": 64, "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
        "use_temporal_attention": False, "use_temporal_resblock": False}, 4),
    "flux": ("Flux", {
        "image_model": "flux", "in_channels": 16, "patch_size": 2, "out_channels": 16, "vec_in_dim": 768,
        "context_in_dim": 4096, "hidden_size": 3072, "mlp_ratio": 4.0, "num_heads": 24, "depth": 19,
        "depth_single_blocks": 38, "axes_dim": [16, 56, 56], "theta": 10000, "qkv_bias": True,
        "guidance_embed": True}, 16),
}


def import_comfyui():
    root = os.environ.get("COMFYUI_PATH")
    if not root or not os.path.isfile(os.path.join(root, "comfy", "samplers.py")):
        sys.exit("set COMFYUI_PATH to a ComfyUI checkout (a clone of Comfy-Org/ComfyUI)")
    sys.path.insert(0, root)


def build(name: str, device):
    """A ModelPatcher with random bf16 weights on ``device``, and (positive, negative, cfg)."""
    import comfy.model_patcher
    import comfy.supported_models

    class_name, unet_config, _ = CASES[name]
    config = getattr(comfy.supported_models, class_name)(dict(unet_config))
    config.set_inference_dtype(torch.bfloat16, None)
    gen = torch.Generator(device).manual_seed(0)
    with torch.inference_mode():  # as ComfyUI's loaders create weights
        model = config.get_model({}, device=device)
        for param_name, parameter in model.named_parameters():
            if parameter.ndim >= 2:  # fan-in scaled, so activations stay finite through the depth
                fan_in = parameter[0].numel()
                parameter.copy_(torch.randn(parameter.shape, generator=gen, device=device) / fan_in ** 0.5)
            else:
                parameter.fill_(1.0 if param_name.endswith(("norm.weight", "scale")) else 0.0)
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=device)
    if name == "sd15":
        positive = [[torch.randn(1, 77, 768), {}]]
        negative = [[torch.zeros(1, 77, 768), {}]]
        return patcher, positive, negative, 7.0
    if name == "sdxl":
        extra = {"width": 1024, "height": 1024, "target_width": 1024, "target_height": 1024}
        positive = [[torch.randn(1, 77, 2048), {"pooled_output": torch.randn(1, 1280), **extra}]]
        negative = [[torch.zeros(1, 77, 2048), {"pooled_output": torch.zeros(1, 1280), **extra}]]
        return patcher, positive, negative, 7.0
    positive = [[torch.randn(1, 256, 4096) * 0.1, {"pooled_output": torch.randn(1, 768), "guidance": 3.5}]]
    negative = [[torch.zeros(1, 256, 4096), {"pooled_output": torch.zeros(1, 768), "guidance": 3.5}]]
    return patcher, positive, negative, 1.0  # Flux-dev: guidance is embedded, CFG 1 (one call per step)


def peak_gib(device) -> float:
    if device.type != "cuda":
        return float("nan")
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2 ** 30


def reset_peak(device):
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def measure(name, resolution, mode, device, args):
    from learned_solvers.distill.comfyui import distill_model

    built = time.perf_counter()
    patcher, positive, negative, cfg = build(name, device)
    built = time.perf_counter() - built
    channels = CASES[name][2]
    latent = {"samples": torch.zeros(1, channels, resolution // 8, resolution // 8)}
    weights = patcher.model_size() / 2 ** 30
    marks = []

    def progress(step, total, loss, held_out):
        marks.append((time.perf_counter(), step, loss, peak_gib(device)))
        if loss == loss:  # a gradient step: from here on the peak is the fit's own
            reset_peak(device)

    reset_peak(device)
    began = time.perf_counter()
    error = ""
    try:
        solver = distill_model(patcher, positive, negative, latent, cfg, nfe=[5], method="auto", base="dpmpp_2m",
                               teacher_steps=args.teacher_steps, samples=2, validation=1, iterations=args.iterations,
                               batch_size=1, memory=mode, dtype=None, progress=progress)
        plan = solver.provenance["memory"]
    except torch.OutOfMemoryError:
        error, plan = "out of memory", mode
    except FloatingPointError as failure:  # random weights can overflow; time and memory still count
        error, plan = f"non-finite: {failure}"[:60], mode
    ended = time.perf_counter()
    seconds = ended - began
    teacher = [m for m in marks if m[2] != m[2]]
    steps = [m for m in marks if m[2] == m[2]]
    stages = ""
    if teacher and steps:
        stages = (f"teacher {teacher[-1][0] - began:.0f} s, to first step {steps[0][0] - teacher[-1][0]:.0f} s, "
                  f"after last step {ended - steps[-1][0]:.0f} s; ")
    teacher_peak = max((m[3] for m in teacher), default=float("nan"))
    fit_peak = max((m[3] for m in steps[1:]), default=float("nan"))
    # 3 samples (2 training, 1 validation), each one model call (a CFG pair) per teacher step
    teacher_seconds = (teacher[-1][0] - began) / (3 * args.teacher_steps) if teacher else float("nan")
    gaps = [b[0] - a[0] for a, b in zip(steps, steps[1:])][:-1]  # the last one includes a validation
    step_seconds = sorted(gaps)[len(gaps) // 2] if gaps else float("nan")
    return (f"| {name} | {resolution}² | {plan} | {weights:.1f} | {teacher_peak:.1f} | {fit_peak:.1f} | "
            f"{teacher_seconds:.2f} | {step_seconds:.2f} | {seconds:.0f} | {stages}built in {built:.0f} s {error}|")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=["sd15@512", "sdxl@1024", "flux@1024"],
                        help="model@resolution in pixels; models: " + ", ".join(CASES))
    parser.add_argument("--modes", nargs="+", default=["model calls", "blocks"])
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--teacher-steps", type=int, default=8)
    parser.add_argument("--device", default="cuda", help="cpu: a dry run of the code path (no memory figures)")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    import_comfyui()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("this benchmark measures GPU memory; no CUDA device is available")
    if device.type == "cpu":
        import comfy.cli_args

        comfy.cli_args.args.cpu = True
    if not args.one:
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
        print(f"{name}, torch {torch.__version__}, bf16 weights, one sample per gradient step, NFE 5\n")
        print("| model | size | memory mode | weights GiB | teacher peak GiB | fit peak GiB | teacher s / sample-step "
              "| s / gradient step | total s | note |")
        print("|---|---|---|---|---|---|---|---|---|---|")
    if args.one:  # a child process: one measurement, so no allocation of an earlier one counts
        name, resolution = args.cases[0].split("@")
        print(measure(name, int(resolution), args.modes[0], device, args), flush=True)
        return
    for case in args.cases:
        for mode in args.modes:
            child = subprocess.run([sys.executable, __file__, "--one", "--cases", case, "--modes", mode,
                                    "--iterations", str(args.iterations), "--teacher-steps", str(args.teacher_steps),
                                    "--device", args.device], capture_output=True, text=True)
            rows = [line for line in child.stdout.splitlines() if line.startswith(f"| {case.split('@')[0]} ")]
            if child.returncode or not rows:
                print(f"| {case} | {mode} | failed: {(child.stderr.strip().splitlines() or ['?'])[-1][:200]} |")
            else:
                print(rows[-1], flush=True)


if __name__ == "__main__":
    main()
