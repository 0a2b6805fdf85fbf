"""``distill`` on a ComfyUI MODEL with the user's conditioning and CFG (needs ComfyUI).

ComfyUI runs every node under ``torch.inference_mode()`` and loads weights as inference
tensors, which autograd cannot save. As core's LoRA trainer does, the fit leaves inference
mode, works on a clone of the model patcher, and registers an identity weight wrapper on every
weight and bias, so each forward uses an ordinary copy of the weights. The user's MODEL and
conditioning are never modified: the clone is unloaded afterwards and the conditioning is
copied.

SD1.x/SDXL-style models (``ModelSamplingDiscrete``) map sigma to the nearest of their 1000
training timesteps, which has no gradient. The fit therefore runs with a fractional timestep
(log-sigma interpolated between the two neighbouring training steps, the exact inverse of
ComfyUI's own ``sigma(t)``), and the finished grid and evaluation sigmas are moved onto the
model's discrete sigmas, where ComfyUI's nearest-step lookup is exact (each moves by at most
half a training step; the held-out error reported is the one measured before that move).
Flow models (SD3, Flux, Wan) have continuous timesteps and need none of this.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math

import torch

from ...distill.compare import compare_solvers
from ...distill.discrete import fractional_timestep, snap_solver
from ...distill.memory import LARGE_MODEL_BYTES, MEMORY_MODES, checkpointed_blocks
from ...distill.memory import memory_plan as plan_for
from ...distill.pipeline import distill
from ...distill.prompts import prompt_lines, route_prompts
from ...distill.settings import CompareSettings, FitSettings, NoiseLevels, RunHooks
from ...distill.sfd import SfdSettings, distill_network
from .schedulers import host_schedules, model_facts


def fingerprint(model) -> str:
    """A short, stable id of the network: sha256 over its family, its config and a sample of
    its weights (names, shapes and the first 64 values of 8 evenly spread tensors).
    Reading a few hundred numbers costs nothing; patches (LoRAs) are not included."""
    base = model.model
    state = base.diffusion_model.state_dict() if hasattr(base, "diffusion_model") else base.state_dict()
    names = sorted(state)
    digest = hashlib.sha256()
    config = getattr(getattr(base, "model_config", None), "unet_config", {})
    digest.update(type(getattr(base, "model_config", None)).__name__.encode())
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    digest.update(f"{len(names)}".encode())
    picks = sorted({round(i * (len(names) - 1) / 7) for i in range(8)}) if names else []
    for name in (names[i] for i in picks):
        tensor = state[name]
        digest.update(f"{name}{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().flatten()[:64].to("cpu", torch.float32).numpy().tobytes())
    return digest.hexdigest()[:16]


def _fractional_sampling(sampling):
    """A copy of a ModelSamplingDiscrete whose ``timestep(sigma)`` is fractional and differentiable."""
    timestep = fractional_timestep(sampling.log_sigmas)
    fractional = copy.copy(sampling)
    fractional.__class__ = type("Fractional" + type(sampling).__name__, (type(sampling),),
                                {"timestep": lambda self, sigma: timestep(sigma)})
    return fractional


def _copy_conditioning(conditioning):
    """A deep copy of CONDITIONING whose tensors are ordinary (not inference) tensors."""
    def copy_value(value):
        if torch.is_tensor(value):
            return value.clone()
        if isinstance(value, dict):
            return {k: copy_value(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(copy_value(v) for v in value)
        return value

    return [copy_value(entry) for entry in conditioning]


def _release(patcher):
    """Unload our clone so the user's MODEL loads clean (no wrappers, no object patches) next time."""
    import comfy.model_management as mm

    for index in range(len(mm.current_loaded_models) - 1, -1, -1):
        if mm.current_loaded_models[index].model is patcher:
            mm.current_loaded_models.pop(index).model_unload()
    patcher.detach(unpatch_all=True)
    for module in patcher.model.modules():  # the wrappers live on the shared modules: take ours off
        for attribute in ("weight_function", "bias_function"):
            functions = getattr(module, attribute, None)
            if functions:
                setattr(module, attribute, [f for f in functions if f is not _constant])


def memory_plan(model, memory: str = "auto") -> dict:
    """How ``distill_model`` bounds memory for ``model`` (a ComfyUI MODEL): ``memory.memory_plan``
    for its size."""
    return plan_for(memory, model.model_size())


def run_guided(model, positive, negative, cfg: float, shape, seed: int, body, *, for_gradients: bool = False,
               memory: str = "model calls", more_prompts=()):
    """Call ``body(denoiser, device)`` inside ComfyUI's own CFG sampling of a clone of ``model``:
    ``denoiser(x, sigma)`` is the CFG denoiser (the guider) with the user's conditioning, on the
    fractional-timestep sampling for discrete models; returns what ``body`` returns.

    more_prompts: further positive CONDITIONINGs; the denoiser then takes ``prompt`` ([B]
    indices: 0 the positive, k the k-th of these) and runs each sample with its own, all with
    the one negative. ComfyUI prepares every conditioning the guider holds, so each is set
    as an extra entry and swapped in as the positive for the samples of its prompt.

    for_gradients: leave inference mode and give the clone's weights constant copies autograd
    can save (the fit); memory "blocks" also checkpoints every block. The clone is unloaded
    afterwards; the user's MODEL and conditioning are not modified.
    """
    import comfy.model_management as mm
    import comfy.samplers

    facts = model_facts(model)
    patcher = model.clone()
    if facts["discrete"]:
        patcher.add_object_patch("model_sampling", _fractional_sampling(model.get_model_object("model_sampling")))
    result = {}
    extra_keys = [f"learned_solvers_prompt_{index}" for index in range(1, len(more_prompts) + 1)]

    class Driver(comfy.samplers.Sampler):
        """Runs inside CFGGuider.sample, where ``model_wrap`` is the guider: a CFG denoiser."""

        def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
                   disable_pbar=False):
            def with_positive(key):
                prepared = model_wrap.conds[key]

                def call(x, sigma, **_):
                    model_wrap.conds["positive"] = prepared
                    return model_wrap(x, sigma, **extra_args)

                return call

            denoiser = with_positive("positive")
            if more_prompts:
                denoiser = route_prompts([denoiser] + [with_positive(key) for key in extra_keys])
            denoiser.sigma_convention = facts["convention"]
            result["value"] = body(denoiser, noise.device)
            return torch.zeros_like(latent_image)

    grad_modes = ((torch.inference_mode(False), torch.enable_grad()) if for_gradients
                  else (contextlib.nullcontext(), torch.no_grad()))
    with grad_modes[0], grad_modes[1]:
        if for_gradients:
            _constant_weights(patcher)
        guider = comfy.samplers.CFGGuider(patcher)
        guider.set_conds(_copy_conditioning(positive), _copy_conditioning(negative))
        guider.inner_set_conds({key: _copy_conditioning(p) for key, p in zip(extra_keys, more_prompts)})
        guider.set_cfg(cfg)
        blocks = (checkpointed_blocks(patcher.model.diffusion_model) if for_gradients and memory == "blocks"
                  else contextlib.nullcontext())
        try:
            mm.load_models_gpu([patcher], memory_required=1e20 if for_gradients else 0, force_full_load=True)
            zeros = torch.zeros((1,) + tuple(shape))
            with blocks:
                guider.sample(zeros, zeros, Driver(), torch.tensor([facts["sigma_max"], 0.0]), seed=seed,
                              disable_pbar=True)
        finally:
            _release(patcher)
    return result["value"]


def latent_shape(model, latent) -> tuple:
    """One sample's shape [C, H, W] of a LATENT dict, with the channels the model needs."""
    import comfy.sample

    return tuple(comfy.sample.fix_empty_latent_channels(model, latent["samples"]).shape[1:])


def host_facts(model) -> tuple:
    """(model_facts, the ``NoiseLevels`` a fit is told: the model's range and convention, a
    discrete model's sigma table, ComfyUI's own schedules for it)."""
    facts = model_facts(model)
    sampling = model.get_model_object("model_sampling")
    table = sampling.sigmas.detach().to("cpu", torch.float64) if facts["discrete"] else None
    levels = NoiseLevels(facts["sigma_min"], facts["sigma_max"], convention=facts["convention"], sigma_table=table,
                         schedules=host_schedules(sampling))
    return facts, levels


def _model_provenance(model, facts: dict, cfg: float, shape) -> dict:
    """What a result records of the ComfyUI model it was fitted on (never its weights)."""
    return {"family": facts["family"], "prediction": facts["prediction"], "shift": facts.get("shift"),
            "fingerprint": fingerprint(model), "cfg": float(cfg), "resolution": list(shape),
            "sigma_range": [facts["sigma_min"], facts["sigma_max"]]}


def distill_model(model, positive, negative, latent, cfg: float, *, nfe=(4,), memory="auto",
                  hooks: RunHooks | None = None, more_prompts=(), **changes):
    """Distill a solver for a ComfyUI MODEL with its CFG guider; returns a ``LearnedSolver``.

    latent: a LATENT dict; its first sample's shape [C, H, W] is the fitting shape. memory: one
    of MEMORY_MODES (``memory_plan``; its plan also sets ``micro_batch`` and the inference
    batches). changes: ``FitSettings`` fields (method, base, samples, iterations, seed, ...),
    whose defaults are the rest; batch_size counts samples per gradient step, each a CFG pair
    through the model unless cfg is 1. ComfyUI's own schedulers for this model are scored with
    the built-ins. hooks as for ``distill``. more_prompts: further positive CONDITIONINGs
    (``encode_prompts``): the fit then runs on the positive and these, holding every second one
    out of training to report how the result does on prompts it never saw (``distill``'s
    ``prompts``).
    """
    facts, levels = host_facts(model)
    plan = memory_plan(model, memory)
    settings = FitSettings(use_checkpoint=True, micro_batch=plan["micro_batch"], dode_samples=plan["dode_samples"],
                           inference_batch_size=plan["inference_batch_size"]).replace(**changes)
    more_prompts = list(more_prompts or ())
    shape = latent_shape(model, latent)
    provenance = {"model": _model_provenance(model, facts, cfg, shape), "memory": plan["memory"],
                  "batch_size": settings.batch_size}

    def fit(denoiser, device):
        return distill(denoiser, shape, levels=levels, nfe=nfe, settings=settings, device=device, hooks=hooks,
                       prompts=1 + len(more_prompts) if more_prompts else None, provenance=provenance)

    solver = run_guided(model, positive, negative, cfg, shape, settings.seed, fit, for_gradients=True,
                        memory=plan["memory"], more_prompts=more_prompts)
    snap_solver(solver, levels.sigma_table if facts["discrete"] else None)
    if any(not math.isfinite(f.held_out_rmse) for f in solver.fits.values()):
        raise FloatingPointError("the fit produced no finite held-out error; lower the CFG or the learning rate")
    return solver


def distill_network_model(model, positive, negative, latent, cfg: float, *, nfe: int = 2, memory: str = "auto",
                          hooks: RunHooks | None = None, **changes):
    """``sfd.distill_network`` on a ComfyUI MODEL with its CFG guider: LoRA adapters on its
    diffusion model, trained for Euler at ``nfe`` steps; returns a ``sfd.DistilledNetwork``.

    changes: ``SfdSettings`` fields (rank, iterations, samples, seed, with_solver, ...), whose
    defaults are the rest. The adapters sit on the user's network only while the fit runs
    (forward hooks, removed afterwards, also on an error or a cancel); its weights are never
    written. On a discrete model the grid is moved onto its training sigmas first (and the
    learned solver's, when ``with_solver``, afterwards). memory: one of MEMORY_MODES, as for
    ``distill_model``; its plan also sets the samples per gradient pass (``micro_batch``,
    unless given).
    """
    facts, levels = host_facts(model)
    plan = memory_plan(model, memory)
    settings = SfdSettings(use_checkpoint=True, micro_batch=plan["micro_batch"],
                           inference_batch_size=plan["inference_batch_size"]).replace(**changes)
    shape = latent_shape(model, latent)
    network = model.model.diffusion_model
    provenance = {"model": _model_provenance(model, facts, cfg, shape), "memory": plan["memory"]}

    def fit(denoiser, device):
        return distill_network(denoiser, network, shape, levels=levels, nfe=nfe, settings=settings, device=device,
                               hooks=hooks, discrete=facts["discrete"], provenance=provenance)

    result = run_guided(model, positive, negative, cfg, shape, settings.seed, fit, for_gradients=True,
                        memory=plan["memory"])
    snap_solver(result.with_solver, levels.sigma_table if facts["discrete"] else None)
    return result


def encode_prompts(clip, text: str) -> list:
    """One CONDITIONING per non-empty line of ``text``, encoded by ``clip`` as the core
    CLIPTextEncode node encodes a prompt."""
    lines = prompt_lines(text)
    if lines and clip is None:
        raise ValueError("the prompt list needs a CLIP to encode it: connect the checkpoint's CLIP to the "
                         "Distill Sampler's clip input, or empty the list")
    return [clip.encode_from_tokens_scheduled(clip.tokenize(line)) for line in lines]


def lora_model(model, lora: dict, strength: float = 1.0):
    """A clone of ``model`` with ``lora`` (a LoRA state dict, as read from its file) applied the
    way the core LoraLoaderModelOnly applies it (``comfy.sd.load_lora_for_models``)."""
    import comfy.sd

    patched, _ = comfy.sd.load_lora_for_models(model, None, lora, strength, 0)
    return patched


def compare_model(model, positive, negative, latent, cfg: float, nfe: int, *, solver=None,
                  hooks: RunHooks | None = None, **changes):
    """``compare.compare_solvers`` on a ComfyUI MODEL with its CFG guider: the teacher, ``solver``
    (optional) and every base solver x built-in schedule, ComfyUI's own for this model included.
    changes: ``CompareSettings`` fields (samples, default 8 here; show, seed, teacher_steps)."""
    _, levels = host_facts(model)
    shape = latent_shape(model, latent)
    plan = memory_plan(model, "auto")
    settings = CompareSettings(samples=8, batch_size=plan["inference_batch_size"]).replace(**changes)

    def run(denoiser, device):
        return compare_solvers(denoiser, shape, levels=levels, nfe=nfe, solver=solver, settings=settings,
                               device=device, hooks=hooks)

    return run_guided(model, positive, negative, cfg, shape, settings.seed, run)


def _constant(weight):
    return weight.detach()


def _constant_weights(patcher):
    """Make every weight of the clone's network a constant that autograd can save, without
    touching the user's.

    The fit differentiates through the model calls with respect to the state and the solver's
    parameters only: a weight that required gradients would cost a gradient the size of the
    model (left on the user's parameters) and the inputs of every layer for it. ComfyUI's cast
    layers (``comfy.ops``) copy a weight that has a weight function on each use, so a wrapper
    that detaches that copy suffices for them (no second copy of the model is kept). Tensors
    outside those layers (Flux's RMSNorm scales, learned embeddings of other families) get an
    object patch, which the unpatch puts back: an ordinary copy of an inference tensor (which
    autograd cannot save), a detached view of one that requires gradients."""
    covered = set()
    for name, module in patcher.model.named_modules():
        if hasattr(module, "weight_function"):
            for part in ("weight", "bias"):
                if getattr(module, part, None) is not None:
                    patcher.add_weight_wrapper(f"{name}.{part}", _constant)
                    covered.add(f"{name}.{part}")
    network = patcher.model.diffusion_model
    for kind, tensors in (("parameter", network.named_parameters()), ("buffer", network.named_buffers())):
        for name, tensor in tensors:
            key = f"diffusion_model.{name}"
            if key in covered or not (tensor.is_inference() or tensor.requires_grad):
                continue
            constant = tensor.clone() if tensor.is_inference() else tensor.detach()
            patcher.add_object_patch(key, torch.nn.Parameter(constant, requires_grad=False) if kind == "parameter"
                                     else constant)


__all__ = ["LARGE_MODEL_BYTES", "MEMORY_MODES", "compare_model", "distill_model", "distill_network_model",
           "encode_prompts", "fingerprint", "lora_model", "memory_plan"]
