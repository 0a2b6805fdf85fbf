"""``distill`` on the model Stable Diffusion WebUI has loaded (Forge; AUTOMATIC1111 1.9 and later),
with a prompt, a negative prompt and a CFG scale.

The fit runs inside WebUI's own txt2img processing, as the ComfyUI side runs inside ComfyUI's
sampling: a driver sampler, registered for the length of one ``process_images`` call, is
handed WebUI's CFG denoiser (the prompt's conditioning and the CFG set up, the model loaded on
its device) and runs ``distill`` on it. WebUI samples under ``torch.inference_mode()``; the
driver leaves it for the fit, works on ordinary copies of the conditioning, and keeps every
weight of the network out of autograd (``requires_grad`` off, an inference-mode weight
replaced by an ordinary copy for the fit), putting back each flag and tensor afterwards. A
discrete model's timestep lookup is made fractional for the fit (``discrete``) and restored.

WebUI's modules are passed in (``webui`` with ``processing``, ``shared``, ``sd_samplers``,
``sd_samplers_common`` and ``sd_samplers_kdiffusion``), so nothing here imports WebUI.
"""

from __future__ import annotations

import contextlib
import copy
import math

import torch

from ...distill.discrete import fractional_timestep, is_discrete, snap_solver
from ...distill.fit import FitCancelled
from ...distill.memory import MEMORY_MODES, checkpointed_blocks, frozen_weights, memory_plan
from ...distill.pipeline import distill
from ...distill.prompts import prompt_lines
from ...distill.settings import METHODS, FitSettings, NoiseLevels, RunHooks
from ...learned_samplers import BASE_SOLVERS
from ...schedules.solver import parse_nfes
from .samplers import host_schedules, model_convention

DRIVER = "Learned solvers: fitting"


def _ordinary(value):
    """A copy of ``value`` (tensors, lists, tuples, named tuples, dicts, plain objects) whose
    tensors are ordinary tensors, not inference-mode ones."""
    if torch.is_tensor(value):
        return value.clone()
    if isinstance(value, dict):
        return {k: _ordinary(v) for k, v in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(_ordinary(v) for v in value))
    if isinstance(value, (list, tuple)):
        return type(value)(_ordinary(v) for v in value)
    if isinstance(getattr(value, "__dict__", None), dict) and not isinstance(value, type) and not callable(value):
        clone = copy.copy(value)
        clone.__dict__.update({k: _ordinary(v) for k, v in value.__dict__.items()})
        return clone
    return value


def conditioning_for(extra_args: dict, prompts) -> dict:
    """WebUI's CFG denoiser arguments for samples run with ``prompts`` (one prompt index per
    sample, into the prompts the processing was given).

    Its denoiser takes one prompt per sample (sample i is paired with prompt i), so each
    sample's rows are picked from the prompts' conditioning (``cond``: a
    MulticondLearnedConditioning of one entry per prompt; ``uncond``: a list of one schedule
    list per prompt; ``image_cond`` [prompts, ...])."""
    prompts = [int(p) for p in prompts]
    cond, uncond, image_cond = extra_args["cond"], extra_args.get("uncond"), extra_args.get("image_cond")
    picked = dict(extra_args)
    multi = copy.copy(cond)
    multi.batch = [cond.batch[p] for p in prompts]
    multi.shape = (len(prompts),)
    picked["cond"] = multi
    if uncond is not None:
        picked["uncond"] = [uncond[min(p, len(uncond) - 1)] for p in prompts]
    if torch.is_tensor(image_cond):
        rows = torch.tensor([min(p, len(image_cond) - 1) for p in prompts], device=image_cond.device)
        picked["image_cond"] = image_cond[rows]
    return picked


@contextlib.contextmanager
def fractional_steps(predictor):
    """Within: a discrete ``predictor``'s ``timestep(sigma)`` is fractional (``discrete``); a
    continuous one is left alone. Yields the sigma table [T] of a discrete model, else None."""
    sigmas = getattr(predictor, "sigmas", None)
    if sigmas is None or not hasattr(predictor, "timestep") or not is_discrete(predictor.timestep, sigmas):
        yield None
        return
    table = sigmas.detach().to("cpu", torch.float64)
    predictor.timestep = fractional_timestep(sigmas.detach().log())  # an instance attribute over the method
    try:
        yield table
    finally:
        del predictor.timestep


def run_in_webui(webui, body, *, prompt, negative_prompt: str, cfg: float, width: int, height: int,
                 seed: int, network=None, for_gradients: bool = False, override_settings: dict | None = None):
    """Call ``body(denoiser, device, facts)`` inside one WebUI txt2img processing run;
    ``denoiser(x, sigma)`` is WebUI's CFG denoiser with the prompt's conditioning; ``prompt``
    may be a list (one processing batch of them): the denoiser then takes ``prompt`` ([B]
    indices into the list) and runs each sample with its own, all with the one negative prompt; facts holds
    the model's convention, sigma_min, sigma_max, its discrete sigma table (or None) and WebUI's
    k-diffusion wrapper of the model (what WebUI's schedules are given).
    for_gradients: leave inference mode and keep the weights of ``network()`` (a function: WebUI
    loads the checkpoint only inside the processing; facts["network"] holds what it returned)
    out of autograd (``frozen_weights``). Raises ``FitCancelled`` when WebUI's Interrupt
    stopped it."""
    result = {}
    # WebUI's Interrupt raises its InterruptedException (a BaseException) from the CFG denoiser
    interrupted = (Exception, getattr(webui.sd_samplers_common, "InterruptedException", Exception))

    def driver(model, x, sigmas, extra_args=None, callback=None, disable=None):
        wrapper = getattr(model, "inner_model", None)
        predictor = getattr(wrapper, "predictor", None)
        modes = ((torch.inference_mode(False), torch.enable_grad()) if for_gradients
                 else (contextlib.nullcontext(), torch.no_grad()))
        with modes[0], modes[1]:
            args = _ordinary(extra_args or {})
            # the network is asked for here: WebUI loads the checkpoint lazily, inside the processing
            net = network() if network is not None else None
            weights = frozen_weights(net) if for_gradients and net is not None else contextlib.nullcontext()
            steps = fractional_steps(predictor) if for_gradients else contextlib.nullcontext()
            with weights, steps as table:
                facts = {"convention": model_convention(wrapper), "wrapper": wrapper, "network": net,
                         "sigma_min": float(wrapper.sigmas[0]), "sigma_max": float(wrapper.sigmas[-1]),
                         "table": table}

                def denoiser(x, sigma, prompt=None, **_):
                    # picking each sample's rows is a few list lookups, next to a model call
                    rows = [0] * x.shape[0] if prompt is None else prompt.tolist()
                    return model(x, sigma, **conditioning_for(args, rows))

                denoiser.sigma_convention = facts["convention"]
                try:
                    result["value"] = body(denoiser, x.device, facts)
                except interrupted as err:
                    # caught here, so WebUI's sampling finishes as usual (its cleanup, one latent
                    # of the prompt's batch) and the failure is raised once it has
                    result["error"] = err
        return torch.zeros_like(x)

    data = webui.sd_samplers_common.SamplerData(
        DRIVER, lambda model: webui.sd_samplers_kdiffusion.KDiffusionSampler(driver, model), [], {})
    samplers = webui.sd_samplers
    samplers.all_samplers.append(data)
    samplers.all_samplers_map[DRIVER] = data
    try:
        p = webui.processing.StableDiffusionProcessingTxt2Img(
            sd_model=webui.shared.sd_model, prompt=prompt, negative_prompt=negative_prompt, cfg_scale=float(cfg),
            width=int(width), height=int(height), steps=1, seed=int(seed), sampler_name=DRIVER, scheduler="Automatic",
            batch_size=len(prompt) if isinstance(prompt, list) else 1, n_iter=1, do_not_save_samples=True,
            do_not_save_grid=True, override_settings=dict(override_settings or {}))
        webui.processing.process_images(p)
    finally:
        samplers.all_samplers.remove(data)
        samplers.all_samplers_map.pop(DRIVER, None)
    error = result.get("error")
    if isinstance(error, Exception) and not isinstance(error, FitCancelled):
        raise error
    if "value" not in result:
        raise FitCancelled("the fit was interrupted")
    return result["value"]


# what a distill request may set besides the prompt and size: FitSettings fields a user chooses
REQUEST_SETTINGS = ("method", "base", "init_sigmas", "samples", "validation", "iterations", "batch_size",
                    "teacher_steps", "seed")
MAX_PIXELS = 2048
# prompts in one fit: WebUI encodes them as one processing batch
MAX_PROMPTS = 64


def parse_request(body: dict) -> dict:
    """The keyword arguments of ``distill_webui_model`` (and "name", the file name) from a
    distill request's JSON fields: prompt, prompt_list (more prompts: text with one per line, or
    a list; with any, "prompt" is the list of the prompt and these), negative_prompt, cfg_scale,
    width, height, nfe ("4", "4, 6" or [4, 6]), name, override_settings (WebUI settings for the
    run, as txt2img takes them: clip skip, emphasis, ...), memory (``memory.MEMORY_MODES``) and
    ``REQUEST_SETTINGS``. Raises ValueError naming the field and what it must be."""
    if not isinstance(body, dict):
        raise ValueError("the request must be a JSON object")
    known = {"prompt", "negative_prompt", "cfg_scale", "width", "height", "nfe", "name", "override_settings",
             "memory", "prompt_list", *REQUEST_SETTINGS}
    unknown = sorted(set(body) - known)
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(unknown)}; the fields are {', '.join(sorted(known))}")
    request = {"prompt": str(body.get("prompt", "")), "negative_prompt": str(body.get("negative_prompt", ""))}
    listed = body.get("prompt_list") or []
    if not isinstance(listed, (str, list)) or not all(isinstance(line, str) for line in listed):
        raise ValueError("prompt_list must be text (one prompt per line) or a list of prompts")
    more_prompts = prompt_lines(listed)
    if len(more_prompts) >= MAX_PROMPTS:
        raise ValueError(f"prompt_list may hold at most {MAX_PROMPTS - 1} prompts (the prompt is one more); "
                         f"got {len(more_prompts)}")
    if more_prompts:  # the fit runs on them all (``distill_webui_model``)
        request["prompt"] = [request["prompt"], *more_prompts]
    overrides = body.get("override_settings") or {}
    if not isinstance(overrides, dict):
        raise ValueError("override_settings must be an object of WebUI settings, as in txt2img")
    request["override_settings"] = dict(overrides)
    request["memory"] = str(body.get("memory", "auto"))
    if request["memory"] not in MEMORY_MODES:
        raise ValueError(f"memory must be one of {', '.join(MEMORY_MODES)}; got {request['memory']!r}")
    try:
        request["cfg"] = float(body.get("cfg_scale", 7.0))
        sizes = {side: int(body.get(side, 512)) for side in ("width", "height")}
    except (TypeError, ValueError):
        raise ValueError("cfg_scale must be a number, width and height whole numbers of pixels") from None
    if not (math.isfinite(request["cfg"]) and 0 < request["cfg"] <= 100):
        raise ValueError(f"cfg_scale must be between 0 and 100; got {body.get('cfg_scale')}")
    for side, value in sizes.items():
        if not 64 <= value <= MAX_PIXELS or value % 8:
            raise ValueError(f"{side} must be a multiple of 8 from 64 to {MAX_PIXELS}; got {value}")
    request.update(sizes)
    nfe = body.get("nfe", "4")
    request["nfe"] = parse_nfes(", ".join(str(n) for n in nfe) if isinstance(nfe, (list, tuple)) else nfe)
    settings = {key: body[key] for key in REQUEST_SETTINGS if key in body}
    FitSettings().replace(**settings).check()  # a bad value is refused here, before any work
    request.update(settings)
    name = str(body.get("name") or f"webui_nfe{'_'.join(str(n) for n in request['nfe'])}")
    request["name"] = name
    return request


def error_advice(err: BaseException) -> str:
    """What a user should do about a failed fit: out of memory gets the ways to need less."""
    if isinstance(err, (torch.OutOfMemoryError, MemoryError)):
        return ("the fit ran out of memory. Fit at a smaller size (the schedule transfers to larger images), use "
                "fewer samples, or free other models first")
    return str(err)


def distill_webui_model(webui, *, prompt, negative_prompt: str = "", cfg: float = 7.0, width: int = 512,
                        height: int = 512, nfe=(4,), network=None, hooks: RunHooks | None = None, provenance=None,
                        override_settings: dict | None = None, memory: str = "auto", **settings):
    """Distill a solver for the model WebUI has loaded, on its CFG denoiser with ``prompt``;
    returns a ``LearnedSolver``. prompt: one prompt, or a list of them: the fit then runs on
    them all, holding every second one out of training (``distill``'s ``prompts``). width,
    height: pixels (the latent is 4 x 1/8 of each). network(): the model's network, whose
    weights stay out of autograd; provenance(): what the file records of the model (both
    functions, asked once the checkpoint is loaded). WebUI's own schedules for this model
    (``samplers.host_schedules``) are scored with the built-ins.
    ``settings`` are ``FitSettings`` fields (method, samples, iterations, ...); each model call
    is recomputed in backward (the memory of one call per gradient step), and with memory
    "blocks" (or "auto" on a network of ``memory.LARGE_MODEL_BYTES`` or more) each block of the
    network too (``memory.memory_plan``). hooks as for ``distill``; WebUI's Interrupt also
    stops it (``FitCancelled``)."""
    s = FitSettings().replace(**settings).check().replace(use_checkpoint=True)
    shape = (4, int(height) // 8, int(width) // 8)
    tables = {}
    prompts = prompt if isinstance(prompt, list) and len(prompt) > 1 else None
    memory_plan(memory, 0)  # an unknown mode is refused before any work

    def fit(denoiser, device, facts):
        tables["table"] = facts["table"]
        low, high = facts["sigma_min"], facts["sigma_max"]
        levels = NoiseLevels(low, high, convention=facts["convention"], sigma_table=facts["table"],
                             schedules=host_schedules(webui.sd_schedulers, facts["wrapper"], low, high))
        net = facts["network"]
        size = sum(p.numel() * p.element_size() for p in net.parameters()) if net is not None else 0
        plan = memory_plan(memory, size)
        blocks = (checkpointed_blocks(getattr(net, "diffusion_model", net))
                  if plan["memory"] == "blocks" and net is not None else contextlib.nullcontext())
        planned = s.replace(inference_batch_size=plan["inference_batch_size"], dode_samples=plan["dode_samples"],
                            micro_batch=settings.get("micro_batch", plan["micro_batch"]))
        model = {"cfg": float(cfg), "resolution": list(shape), "sigma_range": [low, high],
                 **(provenance() if provenance else {})}
        with blocks:
            return distill(denoiser, shape, levels=levels, nfe=nfe, settings=planned, device=device, hooks=hooks,
                           prompts=len(prompts) if prompts else None,
                           provenance={"model": model, "memory": plan["memory"]})

    solver = run_in_webui(webui, fit, prompt=prompts or (prompt[0] if isinstance(prompt, list) else prompt),
                          negative_prompt=negative_prompt, cfg=cfg, width=width, height=height, seed=s.seed,
                          network=network, for_gradients=True, override_settings=override_settings)
    snap_solver(solver, tables.get("table"))
    if any(not math.isfinite(f.held_out_rmse) for f in solver.fits.values()):
        raise FloatingPointError("the fit produced no finite held-out error; lower the CFG or the learning rate")
    return solver


__all__ = ["BASE_SOLVERS", "DRIVER", "MEMORY_MODES", "METHODS", "REQUEST_SETTINGS", "FitCancelled", "FitSettings",
           "conditioning_for", "distill_webui_model", "error_advice", "frozen_weights", "parse_request",
           "run_in_webui"]
