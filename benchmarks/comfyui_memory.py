"""Time and peak GPU memory of the Distill Sampler's fit on real architectures (random weights).

    COMFYUI_PATH=/path/to/ComfyUI python benchmarks/comfyui_memory.py
    COMFYUI_PATH=/path/to/ComfyUI python benchmarks/comfyui_memory.py --cases sdxl@1024 --modes blocks
    COMFYUI_PATH=/path/to/ComfyUI python benchmarks/comfyui_memory.py --device meta   # estimate, no GPU

Builds SD1.5, SDXL and Flux-dev through ComfyUI's own model classes with random bf16 weights
(time and memory do not depend on the values), with conditioning shaped like their text
encoders' (SD1.5 and SDXL with a CFG pair, Flux at CFG 1 with its embedded guidance), and runs
``distill_model`` exactly as the Distill Sampler node does, with a short fit: one sample per
gradient step, NFE 5 (five unrolled model calls per step). It prints the weights' size, the
peak memory allocated while recording the teacher and during the gradient steps, the seconds
per teacher model call and per gradient step, for each memory mode.

``--device meta`` estimates the peak of one gradient step without a GPU and without memory:
the same networks on PyTorch's meta device (shapes only), the node's own weight treatment,
memory mode and solver loop, the CFG pair batched as ComfyUI batches it, attention as the flash
kernel a GPU runs; a dispatch hook adds up the bytes of the tensors alive at each moment. It
leaves out the CUDA allocator's rounding and caches, library workspaces and the teacher phase.
``--weights-require-grad`` makes it treat the weights as trainable (as a full fine-tune would).
``--fit sfd`` estimates one gradient step of the SFD fit instead (Distill Model (SFD)): LoRA
adapters of ``--rank`` on the network, ``--micro-batch`` samples through one checkpointed Euler
step, the adapters' gradients and Adam's moments, the base weights constant.
``--device cpu`` runs the node's fit on the CPU and reports the process's peak resident memory
above what it held before the model was built (Linux; set ``MALLOC_MMAP_THRESHOLD_=65536`` so
freed buffers go back to the system): slow, but a real run to check the estimate against.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

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


# per model: the conditioning the network sees, [tokens, width] for the text and [width] for the
# pooled/ADM vector (SDXL's 2816 = pooled 1280 + six size embeddings of 256)
CONDITIONING = {"sd15": ((77, 768), None), "sdxl": ((77, 2048), (2816,)), "flux": ((256, 4096), (768,))}


def import_comfyui():
    root = os.environ.get("COMFYUI_PATH")
    if not root or not os.path.isfile(os.path.join(root, "comfy", "samplers.py")):
        sys.exit("set COMFYUI_PATH to a ComfyUI checkout (a clone of Comfy-Org/ComfyUI)")
    sys.path.insert(0, root)
    # ComfyUI imports torchvision at start; these models never use it
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
    from comfyui_env import install_placeholders

    install_placeholders()


def model_config(name: str):
    """ComfyUI's model config for ``name`` (a CASES key), computing in bf16."""
    import comfy.supported_models

    class_name, unet_config, _ = CASES[name]
    config = getattr(comfy.supported_models, class_name)(dict(unet_config))
    config.set_inference_dtype(torch.bfloat16, None)
    return config


def build(name: str, device):
    """A ModelPatcher with random bf16 weights on ``device``, and (positive, negative, cfg)."""
    import comfy.model_patcher

    config = model_config(name)
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
    text = CONDITIONING[name][0]
    if name == "sd15":
        positive = [[torch.randn(1, *text), {}]]
        negative = [[torch.zeros(1, *text), {}]]
        return patcher, positive, negative, CFG[name]
    if name == "sdxl":
        extra = {"width": 1024, "height": 1024, "target_width": 1024, "target_height": 1024}
        positive = [[torch.randn(1, *text), {"pooled_output": torch.randn(1, 1280), **extra}]]
        negative = [[torch.zeros(1, *text), {"pooled_output": torch.zeros(1, 1280), **extra}]]
        return patcher, positive, negative, CFG[name]
    pooled = CONDITIONING[name][1]
    positive = [[torch.randn(1, *text) * 0.1, {"pooled_output": torch.randn(1, *pooled), "guidance": 3.5}]]
    negative = [[torch.zeros(1, *text), {"pooled_output": torch.zeros(1, *pooled), "guidance": 3.5}]]
    return patcher, positive, negative, CFG[name]


CFG = {"sd15": 7.0, "sdxl": 7.0, "flux": 1.0}  # Flux-dev: guidance is embedded, CFG 1 (one call per step)


def _process_memory_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith(field)).split()[1])


def _tracks_process_memory(device) -> bool:
    """On a Linux CPU, peaks are the process's resident memory (resettable through clear_refs)."""
    return device.type == "cpu" and os.path.exists("/proc/self/clear_refs")


def peak_gib(device) -> float:
    """Peak GPU memory allocated since the last reset; on a CPU (Linux), the process's peak
    resident memory since the last reset."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) / 2 ** 30
    if _tracks_process_memory(device):
        return _process_memory_kib("VmHWM:") / 2 ** 20
    return float("nan")


def reset_peak(device):
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    elif _tracks_process_memory(device):
        with open("/proc/self/clear_refs", "w") as refs:  # "5": the peak resident size restarts from now
            refs.write("5")


def measure(name, resolution, mode, device, args):
    from learned_solvers.distill import RunHooks
    from learned_solvers.hosts.comfyui.fitting import distill_model

    # on a CPU the peaks are the process's resident memory, so count from what it held before the model
    before = _process_memory_kib("VmRSS:") / 2 ** 20 if _tracks_process_memory(device) else 0.0
    built = time.perf_counter()
    patcher, positive, negative, cfg = build(name, device)
    built = time.perf_counter() - built
    channels = CASES[name][2]
    latent = {"samples": torch.zeros(1, channels, resolution // 8, resolution // 8)}
    weights = patcher.model_size() / 2 ** 30
    marks = []

    def progress(step, total, loss, held_out, seconds_left=None):
        marks.append((time.perf_counter(), step, loss, peak_gib(device)))
        if loss == loss:  # a gradient step: from here on the peak is the fit's own
            reset_peak(device)

    reset_peak(device)
    began = time.perf_counter()
    error = ""
    try:
        solver = distill_model(patcher, positive, negative, latent, cfg, nfe=[5], method="auto", base="dpmpp_2m",
                               teacher_steps=args.teacher_steps, samples=2, validation=1, iterations=args.iterations,
                               batch_size=1, memory=mode, dtype=None, hooks=RunHooks(progress=progress))
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
    teacher_peak = max((m[3] for m in teacher), default=float("nan")) - before
    fit_peak = max((m[3] for m in steps[1:]), default=float("nan")) - before
    # 3 samples (2 training, 1 validation), each one model call (a CFG pair) per teacher step
    teacher_seconds = (teacher[-1][0] - began) / (3 * args.teacher_steps) if teacher else float("nan")
    gaps = [b[0] - a[0] for a, b in zip(steps, steps[1:])][:-1]  # the last one includes a validation
    step_seconds = sorted(gaps)[len(gaps) // 2] if gaps else float("nan")
    return (f"| {name} | {resolution}² | {plan} | {weights:.1f} | {teacher_peak:.1f} | {fit_peak:.1f} | "
            f"{teacher_seconds:.2f} | {step_seconds:.2f} | {seconds:.0f} | {stages}built in {built:.0f} s {error}|")


class LiveBytes(TorchDispatchMode):
    """Adds up the bytes of the meta tensors alive while it is active, and their peak.

    A storage counts from the operation that creates it until it is freed (a weak reference's
    callback); a result that shares an input's storage (a view, an in-place update) adds
    nothing, and neither do tensors made before (the weights, counted apart)."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self.counted = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {id(t.untyped_storage()) for t in tree_flatten((args, kwargs))[0] if self._meta(t)}
        for tensor in tree_flatten(out)[0]:
            if not self._meta(tensor):
                continue
            storage = tensor.untyped_storage()
            key = id(storage)
            if key in self.counted or key in inputs:
                continue
            self.counted.add(key)
            self.live += storage.nbytes()
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._freed, storage.nbytes(), key)
        return out

    @staticmethod
    def _meta(value):
        return isinstance(value, torch.Tensor) and value.device.type == "meta"

    def _freed(self, nbytes, key):
        self.live -= nbytes
        self.counted.discard(key)


@contextlib.contextmanager
def flash_attention_on_meta():
    """Attention on meta tensors as the flash kernel a GPU runs (it saves the output and a
    row statistic, not the attention matrix that the meta device's default math path would)."""
    plain = torch.nn.functional.scaled_dot_product_attention

    def flash(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kwargs):
        if attn_mask is None and q.device.type == "meta" and not kwargs:
            return torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, dropout_p, is_causal, scale=scale)[0]
        return plain(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale, **kwargs)

    torch.nn.functional.scaled_dot_product_attention = flash
    try:
        yield
    finally:
        torch.nn.functional.scaled_dot_product_attention = plain


def estimate(name, resolution, mode, args):
    """One gradient step of the fit (NFE 5, one sample) on meta tensors: its estimated peak."""
    import comfy.model_patcher

    from learned_solvers.hosts.comfyui.fitting import _constant_weights
    from learned_solvers.distill.fit import _loss
    from learned_solvers.distill.memory import checkpointed_blocks, checkpointed_model
    from learned_solvers.learned_samplers import sample_learned

    meta = torch.device("meta")
    channels = CASES[name][2]
    model = model_config(name).get_model({}, device=meta).to(meta)
    weights = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=meta, offload_device=meta)
    if args.weights_require_grad:  # weights copied on use by ComfyUI's cast layers, gradients flowing to them
        for module in model.modules():
            if hasattr(module, "weight_function"):
                module.weight_function, module.bias_function = [lambda w: w], [lambda b: b]
    else:
        _constant_weights(patcher)
    patcher.patch_model(device_to=meta)

    cfg = CFG[name]
    pair = 1 if cfg == 1.0 else 2  # ComfyUI runs cond and uncond as one batch; at CFG 1 only cond
    text, pooled = CONDITIONING[name]
    rows = pair * (args.micro_batch if args.fit == "sfd" else 1)  # the batch each model call sees
    conditioning = {"c_crossattn": torch.zeros(rows, *text, device=meta)}
    if pooled:
        conditioning["y"] = torch.zeros(rows, *pooled, device=meta)
    if name == "flux":
        conditioning["guidance"] = torch.full((rows,), 3.5, device=meta)

    def denoiser(x, sigma, **_):
        out = model.apply_model(x.repeat(pair, 1, 1, 1), sigma.repeat(pair), **conditioning)
        if pair == 1:
            return out
        cond, uncond = out.chunk(2)
        return uncond + cfg * (cond - uncond)

    flow = name == "flux"
    sigmas = torch.tensor([1.0, 0.75, 0.5, 0.25, 0.08, 0.0] if flow else [14.61, 4.0, 1.5, 0.5, 0.1, 0.0])
    blocks = checkpointed_blocks(model.diffusion_model) if mode == "blocks" else contextlib.nullcontext()
    if args.fit == "sfd":
        return _estimate_sfd(name, resolution, mode, args, model, denoiser, weights, flow, blocks)
    began = time.perf_counter()
    with LiveBytes() as tracked, flash_attention_on_meta(), blocks:
        # the start depends on the learned noise offsets (soft slack), so the state carries gradients
        start = torch.zeros(1, channels, resolution // 8, resolution // 8, device=meta, requires_grad=True)
        out = sample_learned(checkpointed_model(denoiser), start, sigmas, None, None, True, base="dpmpp_2m",
                             convention="flow" if flow else "ve")
        _loss(out, torch.zeros_like(out), "l2").backward()
    seconds = time.perf_counter() - began
    note = ", weights trainable" if args.weights_require_grad else ""
    return (f"| {name} | {resolution}² | {mode} | {weights / 2 ** 30:.1f} | {(weights + tracked.peak) / 2 ** 30:.1f} "
            f"| estimate ({seconds:.0f} s on the CPU{note}) |")


def _estimate_sfd(name, resolution, mode, args, model, denoiser, weights, flow, blocks):
    """One gradient step of the SFD fit on meta tensors: LoRA adapters of ``args.rank`` on the
    network, ``args.micro_batch`` samples through one checkpointed Euler step with the L1 loss
    (as ``sfd._train`` steps), the adapters' gradients; the adapters and Adam's two moments count
    beside the weights."""
    from learned_solvers.distill.lora import LoraAdapters
    from learned_solvers.distill.memory import checkpointed_model
    from learned_solvers.learned_samplers import sample_learned

    meta = torch.device("meta")
    adapters = LoraAdapters(model.diffusion_model, args.rank, device=meta)
    adapter_bytes = sum(p.numel() * p.element_size() for p in adapters.parameters())
    channels = CASES[name][2]
    sigma, sigma_next = (1.0, 0.5) if flow else (14.61, 1.5)
    began = time.perf_counter()
    with LiveBytes() as tracked, flash_attention_on_meta(), blocks, adapters.attached():
        x = torch.zeros(args.micro_batch, channels, resolution // 8, resolution // 8, device=meta)
        # sfd.euler_step's call, with the sigmas left on the CPU (a meta tensor has no values to check)
        out = sample_learned(checkpointed_model(denoiser), x, torch.tensor([sigma, sigma_next]), None, None, True,
                             base="euler", convention="flow" if flow else "ve")
        (out - torch.zeros_like(out)).abs().mean().backward()
    seconds = time.perf_counter() - began
    # the gradients were made inside (tracked); the adapters and Adam's moments live throughout
    peak = weights + 3 * adapter_bytes + tracked.peak
    return (f"| {name} | {resolution}² | {mode} | {weights / 2 ** 30:.1f} | {peak / 2 ** 30:.1f} "
            f"| estimate, SFD rank {args.rank} ({adapter_bytes / 2 ** 20:.0f} MiB of adapters), "
            f"{args.micro_batch} samples per step ({seconds:.0f} s on the CPU) |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=["sd15@512", "sdxl@1024", "flux@1024"],
                        help="model@resolution in pixels; models: " + ", ".join(CASES))
    parser.add_argument("--modes", nargs="+", default=["model calls", "blocks"])
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--teacher-steps", type=int, default=8)
    parser.add_argument("--device", default="cuda", help="cpu: the node's run on the CPU (peaks: the process's "
                        "resident memory above its start; slow at full sizes); meta: an estimate of the fit's peak")
    parser.add_argument("--weights-require-grad", action="store_true",
                        help="with --device meta: treat the weights as trainable (their gradients and copies count)")
    parser.add_argument("--fit", choices=["solver", "sfd"], default="solver",
                        help="with --device meta: the Distill node's solver fit (default) or the SFD fit's step")
    parser.add_argument("--rank", type=int, default=8, help="with --fit sfd: the LoRA's rank")
    parser.add_argument("--micro-batch", type=int, default=8, help="with --fit sfd: samples per gradient step")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    import_comfyui()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("this benchmark measures GPU memory; no CUDA device is available")
    if device.type in ("cpu", "meta"):
        import comfy.cli_args

        comfy.cli_args.args.cpu = True
        comfy.cli_args.args.use_pytorch_cross_attention = True  # as on a GPU (and no free-memory queries)
    if not args.one:
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
        what = (f"SFD, {args.micro_batch} samples per gradient step (one Euler step), LoRA rank {args.rank}"
                if args.fit == "sfd" else "one sample per gradient step, NFE 5")
        print(f"{name}, torch {torch.__version__}, bf16 weights, {what}\n")
        if device.type == "meta":
            print("| model | size | memory mode | weights GiB | fit peak GiB | note |\n|---|---|---|---|---|---|")
        else:
            print("| model | size | memory mode | weights GiB | teacher peak GiB | fit peak GiB | teacher s / sample-step "
                  "| s / gradient step | total s | note |")
            print("|---|---|---|---|---|---|---|---|---|---|")
    if args.one:  # a child process: one measurement, so no allocation of an earlier one counts
        name, resolution = args.cases[0].split("@")
        row = (estimate(name, int(resolution), args.modes[0], args) if device.type == "meta"
               else measure(name, int(resolution), args.modes[0], device, args))
        print(row, flush=True)
        return
    for case in args.cases:
        for mode in args.modes:
            child = subprocess.run([sys.executable, __file__, "--one", "--cases", case, "--modes", mode,
                                    "--iterations", str(args.iterations), "--teacher-steps", str(args.teacher_steps),
                                    "--device", args.device, "--fit", args.fit, "--rank", str(args.rank),
                                    "--micro-batch", str(args.micro_batch)]
                                   + (["--weights-require-grad"] if args.weights_require_grad else []),
                                   capture_output=True, text=True)
            rows = [line for line in child.stdout.splitlines() if line.startswith(f"| {case.split('@')[0]} ")]
            if child.returncode or not rows:
                print(f"| {case} | {mode} | failed: {(child.stderr.strip().splitlines() or ['?'])[-1][:200]} |")
            else:
                print(rows[-1], flush=True)


if __name__ == "__main__":
    main()
