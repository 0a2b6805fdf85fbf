"""ComfyUI's nodes (V3 schema). A thin adapter: every computation lives in the library.

Imported only inside ComfyUI (``nodes.extension``, through ``comfy_entrypoint``); elsewhere the
import fails with an ImportError that says so.
"""

from __future__ import annotations

import functools
import logging
import os
import time

import torch

try:
    import comfy.model_management
    import comfy.samplers
    import comfy.utils
    import folder_paths
    from comfy_api.latest import ComfyExtension, io, ui
except ImportError as err:  # not running inside ComfyUI
    raise ImportError("the learned-solvers nodes need ComfyUI (comfy_api) to be importable") from err

from ...distill import METHODS, FitSettings, RunHooks
from ...distill.cost import progress_text
from ...distill.sfd import SfdSettings
from ...learned_samplers import BASE_SOLVERS, CONVENTIONS, sample_learned
from ...schedules import load_learned_solver, read_metadata, reference_schedules, save_learned_solver
from ...schedules.files import OPTIONAL_METADATA, check_writable
from ...schedules.hub import pull_learned_solver
from ...schedules.plot import labelled_rows, preview, solver_figure
from . import schedulers as library
from .fitting import MEMORY_MODES, compare_model, distill_model, distill_network_model, encode_prompts, lora_model

CATEGORY = "sampling/custom_sampling/learned"
DEFAULTS = FitSettings()  # the Distill node shows the library's defaults
log = logging.getLogger("learned_solvers")

LearnedSolverSocket = io.Custom("LEARNED_SOLVER")
NEGATIVE = "The negative prompt (used when cfg > 1)."


def _guided_inputs(model, positive, negative, latent, cfg) -> list:
    """The inputs of a node that runs the model with the user's prompt and CFG, with that node's
    tooltips (None: none): model, positive, negative, latent_image, cfg."""
    return [io.Model.Input("model", tooltip=model), io.Conditioning.Input("positive", tooltip=positive),
            io.Conditioning.Input("negative", tooltip=negative), io.Latent.Input("latent_image", tooltip=latent),
            io.Float.Input("cfg", default=7.0, min=0.0, max=100.0, step=0.1, round=0.01, tooltip=cfg)]


def _image_tensor(picture) -> torch.Tensor:
    """A PIL image as a ComfyUI IMAGE: float [1, H, W, 3] in 0..1."""
    import numpy

    pixels = numpy.asarray(picture.convert("RGB"), dtype=numpy.float32) / 255.0
    return torch.from_numpy(pixels.copy())[None]


def _show_text(text: str):
    """``text`` under the running node on the page (nothing when no server runs, as in scripts)."""
    try:
        from comfy_execution.utils import get_executing_context
        from server import PromptServer
    except ImportError:
        return
    context = get_executing_context()
    server = getattr(PromptServer, "instance", None)
    if context is not None and server is not None:
        server.send_progress_text(text, context.node_id)


def _learned_sampler(solver):
    return comfy.samplers.KSAMPLER(solver.k_sampler(warn=log.warning))


def _save(solver, name, metadata=None):
    path = library.new_file_path(library.register_folder(folder_paths), name)
    save_learned_solver(solver, path, metadata)
    library.register_schedulers(comfy.samplers, folder_paths)
    return path


class SolverFamilySampler(io.ComfyNode):
    """One base solver of the package's solver family as a SAMPLER."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LSSolverFamilySampler",
            display_name="Solver Family Sampler",
            category=CATEGORY,
            description=(
                "Euler, DPM-Solver++ 2M/3M, iPNDM or UniPC from the learned-solver family, "
                "with exact half-log-SNR steps for flow models."
            ),
            inputs=[
                io.Combo.Input("base", options=list(BASE_SOLVERS), default="dpmpp_2m",
                               tooltip="The classical solver; learned solvers start from one of these."),
                io.Combo.Input("corrector", options=["default", "on", "off"], default="default",
                               tooltip="UniPC-style corrector at no extra model call; default: on for UniPC only."),
                io.Combo.Input("convention", options=["auto", *CONVENTIONS], default="auto",
                               tooltip="auto: detect flow models (SD3, Flux, Wan). 've' on a flow model "
                                       "reproduces ComfyUI's own dpmpp_2m/ipndm steps."),
            ],
            outputs=[io.Sampler.Output()],
        )

    @classmethod
    def execute(cls, base, corrector, convention) -> io.NodeOutput:
        options = {"base": base, "convention": convention}
        if corrector != "default":
            options["corrector"] = corrector == "on"
        return io.NodeOutput(comfy.samplers.KSAMPLER(sample_learned, extra_options=options))


class DistillSampler(io.ComfyNode):
    """Fit a few-step solver to the loaded model, prompt and CFG."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LSDistillSampler",
            display_name="Distill Sampler",
            category=CATEGORY,
            description=(
                "Runs a many-step teacher on your model with your prompt and CFG, then fits the "
                "time grid and solver coefficients of a few-step sampler to land where the teacher "
                "lands. Saves the result to models/learned_solvers."
            ),
            inputs=[
                *_guided_inputs("The model to fit for; it is not modified.", "The prompt the fit samples with.",
                                NEGATIVE, "Sets the size and channels the fit runs at (an Empty Latent Image is "
                                          "enough).",
                                "The CFG scale; schedules are specific to it, so use the one you sample with."),
                io.String.Input("nfe", default="4",
                                tooltip="Model calls per image, one or more: '4' or '4, 6, 8'. One teacher "
                                        "run serves them all."),
                io.Combo.Input("method", options=list(METHODS), default="auto",
                               tooltip="auto: D-ODE first (seconds), then grid and coefficients by "
                                       "gradient (recommended). ld3: time grid only. dode: one scalar "
                                       "per step, no backprop. s4s: coefficients. s4s_alt: both, "
                                       "alternating."),
                io.Combo.Input("base", options=["auto", *BASE_SOLVERS], default=DEFAULTS.base,
                               tooltip="The classical solver the learned one starts from. auto: every "
                                       "solver x schedule you already have is scored on your model and "
                                       "the fit starts from the best pair; the result is never worse "
                                       "than that pair (where no fit beats it, it is that pair)."),
                io.Int.Input("teacher_steps", default=DEFAULTS.teacher_steps, min=8, max=200,
                             tooltip="Steps of the reference (teacher) run. It is checked against half as "
                                     "many steps, and samples whose error this estimates is above a tenth of "
                                     "what the best built-in sampler gets at your NFE are run again at twice "
                                     "the steps; the estimate is in the node's text."),
                io.Int.Input("samples", default=DEFAULTS.samples, min=2, max=512,
                             tooltip=f"Noise seeds the fit learns from (another {DEFAULTS.validation} are "
                                     f"held out to check it)."),
                io.Int.Input("iterations", default=DEFAULTS.iterations, min=0, max=5000,
                             tooltip="Gradient steps per NFE (0: D-ODE only)."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF,
                             tooltip="Seeds the noises and the fit; the same seed gives the same result."),
                io.String.Input("filename", default="learned_solver",
                                tooltip="Saved as models/learned_solvers/<filename>.safetensors (a number "
                                        "is added if taken); empty: do not save."),
                io.Combo.Input("memory", options=list(MEMORY_MODES), default="auto", optional=True,
                               tooltip="How the gradient steps bound GPU memory. 'model calls': recompute "
                                       "each model call in backward. 'blocks': also each block inside it "
                                       "(much less memory, about 35% slower). auto: blocks for SDXL and "
                                       "larger, model calls for SD1.x."),
                io.Int.Input("validation", default=DEFAULTS.validation, min=2, max=512, optional=True,
                             tooltip="Noise seeds held out to check the fit and guard its tail (no new "
                                     "flips). 32 with samples 32 halves the teacher's work, but the guard "
                                     "then sees fewer seeds."),
                io.Clip.Input("clip", optional=True, tooltip="Encodes the prompt list (your checkpoint's CLIP)."),
                io.String.Input("prompt_list", default="", multiline=True, optional=True,
                                tooltip="More prompts, one per line, for a file that serves the whole model: "
                                        "the fit runs on the positive and these (same teacher cost: the seeds "
                                        "are spread over them), trains on every second one and checks itself "
                                        "on the others, and its text gives the error on both. The file "
                                        "records how many prompts, never the prompts."),
            ],
            outputs=[
                LearnedSolverSocket.Output(display_name="learned_solver"),
                io.Sampler.Output(display_name="sampler"),
                io.Sigmas.Output(display_name="sigmas", tooltip="The grid of the first NFE."),
                io.Image.Output(display_name="plot", tooltip="The learned grid against karras/exponential/"
                                                             "AYS, and the loss curves."),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model, positive, negative, latent_image, cfg, nfe, method, base, teacher_steps, samples,
                iterations, seed, filename, memory="auto", validation=DEFAULTS.validation, clip=None,
                prompt_list="") -> io.NodeOutput:
        nfes = library.parse_nfes(nfe)
        more_prompts = encode_prompts(clip, prompt_list)
        try:
            solver = distill_model(model, positive, negative, latent_image, cfg, nfe=nfes, method=method, base=base,
                                   teacher_steps=teacher_steps, samples=samples, iterations=iterations, seed=seed,
                                   memory=memory,
                                   hooks=RunHooks(progress=_fit_progress("Distill Sampler"), cancel=_interrupted),
                                   validation=validation, more_prompts=more_prompts)
        except torch.OutOfMemoryError as err:  # re-raised as one, so ComfyUI still unloads its models
            comfy.model_management.soft_empty_cache(True)
            raise torch.OutOfMemoryError(
                "Distill Sampler ran out of GPU memory. Set memory to 'blocks', fit at a smaller latent "
                "size (the schedule transfers to larger images), or free other models first."
            ) from err
        saved = _save(solver, filename) if filename.strip() else None
        first = solver.nfes[0]
        figure = solver_figure(solver, first, reference_schedules(first, *solver.sigma_range))
        text = solver.summary() + (f"\nsaved {os.path.basename(saved)}" if saved else "")
        return io.NodeOutput(solver, _learned_sampler(solver), solver.sigmas(first).float(), _image_tensor(figure),
                             ui=ui.PreviewText(text))


SFD_DEFAULTS = SfdSettings()


def _fit_progress(name):
    """A progress(step, total, loss, held_out, seconds_left) for a long fit: the node's bar,
    a line under the node at most once a second, and the log at each quarter."""
    bar = {"shown": 0.0, "logged": -1}

    def progress(step, total, loss, held_out, seconds_left):
        if "bar" not in bar:
            bar["bar"] = comfy.utils.ProgressBar(total)
        bar["bar"].update_absolute(step, total)
        text = progress_text(step, total, loss, held_out, seconds_left)
        now = time.monotonic()
        if now - bar["shown"] >= 1.0 or step == total:
            bar["shown"] = now
            _show_text(text)
        quarter = 4 * step // max(total, 1)
        if seconds_left == seconds_left and quarter != bar["logged"]:
            bar["logged"] = quarter
            log.info("%s: %s", name, text)

    return progress


def _interrupted():
    comfy.model_management.throw_exception_if_processing_interrupted()
    return False


class DistillModelSFD(io.ComfyNode):
    """Fine-tune the loaded model as a LoRA for few-step Euler sampling (SFD)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LSDistillModelSFD",
            display_name="Distill Model (SFD)",
            category=CATEGORY,
            description=(
                "Trains a LoRA on your model so that a few Euler steps land where a many-step teacher "
                "lands with your prompt and CFG (SFD). For 2 or 3 steps (from 4 on, Distill Sampler alone did "
                "better on the models measured). Saves the LoRA "
                "to models/loras (it loads with Load LoRA) and its sampler to models/learned_solvers; "
                "your MODEL is not modified."
            ),
            inputs=[
                *_guided_inputs("The model to distil; it is not modified.", "The prompt the teacher samples with.",
                                NEGATIVE, "Sets the size and channels the fit runs at.",
                                "The CFG scale the LoRA is trained for: sample with the same one."),
                io.Int.Input("nfe", default=2, min=2, max=10,
                             tooltip="Euler steps (model calls per image) the LoRA is trained for."),
                io.Int.Input("rank", default=SFD_DEFAULTS.rank, min=1, max=256,
                             tooltip="LoRA rank: larger learns more and makes a larger file."),
                io.Int.Input("iterations", default=SFD_DEFAULTS.iterations, min=1, max=100000,
                             tooltip="Optimiser steps; each trains every student step on "
                                     f"{SFD_DEFAULTS.batch_size} cached teacher trajectories."),
                io.Int.Input("teacher_steps", default=SFD_DEFAULTS.teacher_steps, min=8, max=200,
                             tooltip="Teacher calls over the whole range (several sub-steps per Euler step); "
                                     "checked against half as many, the residual is in the node's text."),
                io.Int.Input("samples", default=SFD_DEFAULTS.samples, min=2, max=4096,
                             tooltip=f"Noise seeds the teacher runs once and the fit reuses (another "
                                     f"{SFD_DEFAULTS.validation} are held out to choose the snapshot)."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF,
                             tooltip="Seeds the noises, the adapters and the fit."),
                io.Boolean.Input("learned_solver", default=False,
                                 tooltip="Also fit a learned solver (grid and coefficients) on the distilled "
                                         "model; the SAMPLER and SIGMAS are then that solver's."),
                io.String.Input("filename", default="sfd_lora",
                                tooltip="Saved as models/loras/<filename>.safetensors and "
                                        "models/learned_solvers/<filename>.safetensors (a number is added if "
                                        "taken); empty: do not save."),
                io.Combo.Input("memory", options=list(MEMORY_MODES), default="auto", optional=True,
                               tooltip="As in Distill Sampler: 'blocks' recomputes every block in backward "
                                       "(much less memory)."),
                io.Int.Input("validation", default=SFD_DEFAULTS.validation, min=2, max=512, optional=True,
                             tooltip="Noise seeds held out to choose the best snapshot of the LoRA."),
            ],
            outputs=[
                io.Model.Output(display_name="model", tooltip="Your model with the LoRA applied."),
                io.Sampler.Output(display_name="sampler"),
                io.Sigmas.Output(display_name="sigmas"),
                io.Image.Output(display_name="plot", tooltip="The LoRA's grid against karras/exponential/AYS, "
                                                             "and the loss and held-out curves."),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model, positive, negative, latent_image, cfg, nfe, rank, iterations, teacher_steps, samples,
                seed, learned_solver, filename, memory="auto", validation=SFD_DEFAULTS.validation) -> io.NodeOutput:
        lora_path = solver_path = None
        if filename.strip():  # both folders checked before the fit, not after it
            loras = check_writable(folder_paths.get_folder_paths("loras")[0])
            lora_path = library.new_file_path(loras, filename)
            solver_path = library.new_file_path(library.register_folder(folder_paths), filename)
            check_writable(os.path.dirname(solver_path))
        try:
            result = distill_network_model(model, positive, negative, latent_image, cfg, nfe=nfe, rank=rank,
                                           iterations=iterations, samples=samples, seed=seed,
                                           teacher_steps=teacher_steps, with_solver=learned_solver, memory=memory,
                                           validation=validation,
                                           hooks=RunHooks(progress=_fit_progress("Distill Model (SFD)"),
                                                          cancel=_interrupted))
        except torch.OutOfMemoryError as err:
            comfy.model_management.soft_empty_cache(True)
            raise torch.OutOfMemoryError(
                "Distill Model (SFD) ran out of GPU memory. Set memory to 'blocks', fit at a smaller latent "
                "size, lower the rank, or free other models first.") from err
        text = result.summary()
        if lora_path is not None:
            lora_path, solver_path = result.save(lora_path, solver_path)
            library.register_schedulers(comfy.samplers, folder_paths)
            folder_paths.filename_list_cache.clear()
            text += (f"\nsaved loras/{os.path.basename(lora_path)} and "
                     f"learned_solvers/{os.path.basename(solver_path)}")
            lora = comfy.utils.load_torch_file(lora_path, safe_load=True)
        else:
            lora = result.adapters.file_tensors()
        solver = result.with_solver or result.solver
        figure = solver_figure(result.solver, result.nfe, reference_schedules(result.nfe, *solver.sigma_range))
        return io.NodeOutput(lora_model(model, lora), _learned_sampler(solver), solver.sigmas(result.nfe).float(),
                             _image_tensor(figure), ui=ui.PreviewText(text))


class LearnedSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LSLearnedSampler",
            display_name="Learned Sampler",
            category=CATEGORY,
            description="The learned solver as a SAMPLER for SamplerCustom / SamplerCustomAdvanced. Pair it "
                        "with Learned Sigmas: its coefficients belong to the learned grid.",
            inputs=[LearnedSolverSocket.Input("learned_solver", tooltip="From Distill Sampler or Load "
                                                                        "Learned Solver.")],
            outputs=[io.Sampler.Output()],
        )

    @classmethod
    def execute(cls, learned_solver) -> io.NodeOutput:
        return io.NodeOutput(_learned_sampler(learned_solver))


class LearnedSigmas(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LSLearnedSigmas",
            display_name="Learned Sigmas",
            category=CATEGORY,
            description="The learned time grid as SIGMAS for this model. A step count that was not fitted "
                        "is interpolated, another model's sigma range is remapped (both with a warning).",
            inputs=[
                io.Model.Input("model", tooltip="The model to sample; its sigma range is used."),
                LearnedSolverSocket.Input("learned_solver", tooltip="From Distill Sampler or Load Learned "
                                                                    "Solver."),
                io.Int.Input("steps", default=4, min=1, max=1000, tooltip="Model calls (NFE)."),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Below 1: the tail of a longer grid, as the core schedulers do."),
            ],
            outputs=[io.Sigmas.Output()],
        )

    @classmethod
    def execute(cls, model, learned_solver, steps, denoise) -> io.NodeOutput:
        if denoise <= 0:
            return io.NodeOutput(torch.zeros(0))  # nothing to denoise, as core schedulers return
        sigmas, notes = library.sigmas_for_model(learned_solver, model, steps, denoise)
        for note in notes:
            log.warning("Learned Sigmas: %s", note)
        return io.NodeOutput(sigmas.float())


class LoadLearnedSolver(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LSLoadLearnedSolver",
            display_name="Load Learned Solver",
            category=CATEGORY,
            description="A learned-solver file from models/learned_solvers, or a shipped preset; the file is "
                        "validated before use.",
            inputs=[io.Combo.Input("solver_name", options=library.solver_choices(folder_paths),
                                   tooltip="Files in models/learned_solvers, then the shipped presets.")],
            outputs=[LearnedSolverSocket.Output(display_name="learned_solver")],
        )

    @classmethod
    def fingerprint_inputs(cls, solver_name):
        path = library.solver_path(folder_paths, solver_name)
        return os.path.getmtime(path) if os.path.exists(path) else float("nan")

    @classmethod
    def execute(cls, solver_name) -> io.NodeOutput:
        path = library.solver_path(folder_paths, solver_name)
        solver = load_learned_solver(path)
        metadata = read_metadata(path)
        text = solver.summary() + "".join(f"\n{key}: {metadata[key]}" for key in
                                          OPTIONAL_METADATA
                                          if key in metadata)
        return io.NodeOutput(solver, ui=ui.PreviewText(text))


class SaveLearnedSolver(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LSSaveLearnedSolver",
            display_name="Save Learned Solver",
            category=CATEGORY,
            description="Writes the learned solver to models/learned_solvers as a safetensors file (no "
                        "prompt or workflow inside) to share.",
            inputs=[
                LearnedSolverSocket.Input("learned_solver"),
                io.String.Input("filename", default="learned_solver",
                                tooltip="Name inside models/learned_solvers; a number is added if taken."),
                io.String.Input("author", default="", optional=True, tooltip="Stored in the file."),
                io.String.Input("description", default="", optional=True, tooltip="Stored in the file."),
                io.String.Input("license", default="", optional=True, tooltip="Stored in the file, e.g. "
                                                                               "CC-BY-4.0."),
            ],
            outputs=[],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, learned_solver, filename, author="", description="", license="") -> io.NodeOutput:
        metadata = {k: v for k, v in {"author": author, "description": description, "license": license}.items()
                    if v}
        path = _save(learned_solver, filename, metadata)
        return io.NodeOutput(ui=ui.PreviewText(f"saved {os.path.basename(path)}"))


class PullLearnedSolver(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LSPullLearnedSolver",
            display_name="Pull Learned Solver (Hugging Face)",
            category=CATEGORY,
            description="Downloads a learned-solver file from a Hugging Face model repository into "
                        "models/learned_solvers, validated before it is kept or used.",
            inputs=[
                io.String.Input("repo_id", default="", tooltip="The repository, e.g. someone/sdxl-solvers."),
                io.String.Input("filename", default="", tooltip="The file in it, e.g. sdxl_cfg5_nfe6.safetensors."),
                io.String.Input("revision", default="", optional=True,
                                tooltip="Branch, tag or commit; empty: main."),
                io.Boolean.Input("offline", default=False, optional=True,
                                 tooltip="Only the local Hugging Face cache (no network)."),
            ],
            outputs=[LearnedSolverSocket.Output(display_name="learned_solver")],
        )

    @classmethod
    def execute(cls, repo_id, filename, revision="", offline=False) -> io.NodeOutput:
        path = pull_learned_solver(repo_id.strip(), filename.strip(), library.register_folder(folder_paths),
                                   revision=revision.strip() or None, local_files_only=offline)
        library.register_schedulers(comfy.samplers, folder_paths)
        solver = load_learned_solver(path)
        return io.NodeOutput(solver, ui=ui.PreviewText(f"pulled {os.path.basename(path)}\n{solver.summary()}"))


def _pictures(latents, vae) -> torch.Tensor:
    """Latents [B, C, H, W] as IMAGE [B, H, W, 3]: decoded by the VAE, else a latent preview."""
    if vae is None:
        return preview(latents)
    images = vae.decode(latents)
    return images.reshape(-1, *images.shape[-3:])[..., :3].float().cpu()


class CompareSamplers(io.ComfyNode):
    """The teacher, a learned solver and the built-in pairs side by side on the same seeds."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LSCompareSamplers",
            display_name="Compare Samplers",
            category=CATEGORY,
            description=(
                "Runs an accurate teacher and, at the same number of model calls, a learned solver "
                "and every built-in sampler x scheduler on the same seeds with your prompt and CFG; "
                "shows them side by side with each one's error to the teacher, and gives the "
                "winner as SAMPLER + SIGMAS."
            ),
            inputs=[
                *_guided_inputs(None, None, None, "Sets the size (an Empty Latent Image is enough).", None),
                io.Int.Input("nfe", default=4, min=2, max=100, tooltip="Model calls per image for every "
                                                                      "sampler compared."),
                io.Int.Input("seeds", default=8, min=1, max=256, tooltip="Noise seeds the errors are "
                                                                        "measured on."),
                io.Int.Input("shown", default=4, min=1, max=16, tooltip="Seeds shown in the picture."),
                io.Int.Input("built_ins_shown", default=3, min=1, max=12,
                             tooltip="How many of the best built-in pairs get a row in the picture."),
                io.Int.Input("seed", default=1, min=0, max=0xFFFFFFFFFFFFFFFF),
                LearnedSolverSocket.Input("learned_solver", optional=True),
                io.Vae.Input("vae", optional=True, tooltip="Decodes the results; without it the "
                                                           "picture shows latent previews."),
            ],
            outputs=[
                io.Image.Output(display_name="comparison", tooltip="One row per sampler, one column "
                                                                    "per seed, each labelled with its error."),
                io.String.Output(display_name="table", tooltip="Every sampler's error, best first."),
                io.Sampler.Output(display_name="winner_sampler"),
                io.Sigmas.Output(display_name="winner_sigmas"),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model, positive, negative, latent_image, cfg, nfe, seeds, shown, built_ins_shown, seed,
                learned_solver=None, vae=None) -> io.NodeOutput:
        bar = {}

        def progress(done, total):
            bar.setdefault("bar", comfy.utils.ProgressBar(total)).update_absolute(done, total)

        result = compare_model(model, positive, negative, latent_image, cfg, nfe, solver=learned_solver,
                               samples=seeds, show=min(shown, seeds), seed=seed,
                               hooks=RunHooks(progress=progress, cancel=_interrupted))
        pictures = [(label, _pictures(latents, vae)) for label, latents in result.rows(built_ins_shown)]
        sheet = labelled_rows(pictures)
        table = result.table()
        winner = result.winner
        sampler = comfy.samplers.KSAMPLER(functools.partial(sample_learned, **winner.options))
        return io.NodeOutput(_image_tensor(sheet), table, sampler, winner.sigmas.float(),
                             ui=ui.PreviewText(table))


NODES = [DistillSampler, DistillModelSFD, CompareSamplers, LearnedSampler, LearnedSigmas, LoadLearnedSolver,
         SaveLearnedSolver, PullLearnedSolver, SolverFamilySampler]


class LearnedSolversExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        # ComfyUI 0.3.64 calls only this, once, when it loads the pack: register here
        library.register_folder(folder_paths)
        library.register_schedulers(comfy.samplers, folder_paths)
        return NODES
