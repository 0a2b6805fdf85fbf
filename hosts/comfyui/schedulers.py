"""Learned-solver files inside ComfyUI: the ``models/learned_solvers`` folder, presets, saving,
and scheduler entries for the plain KSampler node.

Everything that needs ComfyUI takes its modules as arguments or imports them lazily, so the
logic is tested without ComfyUI.
"""

from __future__ import annotations

import logging
import os

from ...schedules.files import EXTENSION, FOLDER, PRESETS, LearnedSolverFileError, load_learned_solver, new_file_path
from ...schedules.solver import ModelFamilyError, parse_nfes
PRESET_PREFIX = "preset: "
SCHEDULER_PREFIX = "learned: "
log = logging.getLogger("learned_solvers")


def register_folder(folder_paths) -> str:
    """Register ``models/learned_solvers`` with ComfyUI's ``folder_paths`` (keeping paths a user
    set in extra_model_paths.yaml), create it, and return it."""
    default = os.path.join(folder_paths.models_dir, FOLDER)
    os.makedirs(default, exist_ok=True)
    paths, _ = folder_paths.folder_names_and_paths.get(FOLDER, ([], set()))
    paths = list(paths) + ([default] if default not in paths else [])
    folder_paths.folder_names_and_paths[FOLDER] = (paths, {EXTENSION})
    return default


def preset_files() -> dict:
    """Shipped presets: display name -> path."""
    if not os.path.isdir(PRESETS):
        return {}
    return {PRESET_PREFIX + name: os.path.join(PRESETS, name)
            for name in sorted(os.listdir(PRESETS)) if name.endswith(EXTENSION)}


def solver_choices(folder_paths) -> list:
    """The Load Learned Solver dropdown: the user's files, then the presets."""
    return list(folder_paths.get_filename_list(FOLDER)) + list(preset_files())


def solver_path(folder_paths, choice: str) -> str:
    """The file behind a dropdown entry; raises LearnedSolverFileError naming what is missing."""
    presets = preset_files()
    if choice in presets:
        return presets[choice]
    path = folder_paths.get_full_path(FOLDER, choice)
    if path is None:
        raise LearnedSolverFileError(f"{choice}: not found in models/{FOLDER}; press R to refresh the list or "
                                     f"put the file there")
    return path


# ---------------------------------------------------------------------------------------------
# KSampler scheduler entries

def scheduler_name(filename: str) -> str:
    return SCHEDULER_PREFIX + (filename[: -len(EXTENSION)] if filename.endswith(EXTENSION) else filename)


# ---------------------------------------------------------------------------------------------
# The model a solver is used with

def sampling_facts(sampling) -> dict:
    """A ComfyUI ``model_sampling`` object's convention ("ve" or "flow"), sigma_min / sigma_max
    (host units), shift where it has one, and discrete (sigma snaps to training timesteps)."""
    import comfy.model_sampling

    if not hasattr(sampling, "sigma_min") or not hasattr(sampling, "timestep"):
        raise ModelFamilyError("this MODEL has no model_sampling with sigma_min/timestep; it is not a "
                               "diffusion model ComfyUI can sample")
    flow = isinstance(sampling, comfy.model_sampling.CONST)
    facts = {
        "convention": "flow" if flow else "ve",
        "sigma_min": float(sampling.sigma_min),
        "sigma_max": float(sampling.sigma_max),
        "discrete": isinstance(sampling, comfy.model_sampling.ModelSamplingDiscrete) and not flow,
    }
    if hasattr(sampling, "shift"):
        facts["shift"] = float(sampling.shift)
    return facts


def model_facts(model) -> dict:
    """What a learned solver records about the ComfyUI MODEL (a ModelPatcher) it was fitted on:
    ``sampling_facts`` of its model sampling, and family (the model config's class: SD15, SDXL,
    Flux, ...) and prediction (ComfyUI's model type: EPS, V_PREDICTION, FLOW, ...)."""
    base = model.model
    return {"family": type(getattr(base, "model_config", None)).__name__,
            "prediction": getattr(getattr(base, "model_type", None), "name", "unknown"),
            **sampling_facts(model.get_model_object("model_sampling"))}


def host_schedules(model_sampling, samplers_module=None) -> dict:
    """ComfyUI's own schedulers for this ``model_sampling`` (what KSampler offers the user),
    name -> (steps -> sigmas [steps+1], float64), learned entries excluded: the built-ins a fit
    is scored against and may start from."""
    if samplers_module is None:
        import comfy.samplers as samplers_module
    names = [name for name in getattr(samplers_module, "SCHEDULER_NAMES", [])
             if not str(name).startswith(SCHEDULER_PREFIX)]

    def make(name):
        def sigmas(steps):
            return samplers_module.calculate_sigmas(model_sampling, name, steps).detach().to("cpu").double()
        return sigmas

    return {name: make(name) for name in names}


def sigmas_for_model(solver, model, steps: int, denoise: float = 1.0):
    """The solver's sigmas [steps + 1] for a ComfyUI MODEL or its ``model_sampling``, and
    warnings (remap, interpolation): ``LearnedSolver.schedule`` with the model's range and
    convention, so a solver for the other kind of model is refused (``ModelFamilyError``)."""
    sampling = model.get_model_object("model_sampling") if hasattr(model, "get_model_object") else model
    facts = sampling_facts(sampling)
    return solver.schedule(int(steps), float(denoise), sigma_range=(facts["sigma_min"], facts["sigma_max"]),
                           convention=facts["convention"])


def schedule_for_model(path: str, model_sampling, steps: int):
    """Sigmas [steps + 1] of a learned-solver file for a model's ``model_sampling`` (the KSampler
    entries; ``sigmas_for_model``: its range remaps the grid, a solver for the other kind of
    model is refused; warnings go to the log)."""
    sigmas, notes = sigmas_for_model(load_learned_solver(path), model_sampling, steps)
    for note in notes:
        log.warning("%s: %s", os.path.basename(path), note)
    return sigmas.float()


def register_schedulers(samplers_module, folder_paths) -> list:
    """Add one KSampler scheduler per file in ``models/learned_solvers`` (``learned: <name>``),
    appended to ComfyUI's ``SCHEDULER_NAMES`` and ``SCHEDULER_HANDLERS``; entries whose file is
    gone stay registered (saved workflows keep validating) and fail with a clear message.
    Returns the names added now. Call again after saving a file to refresh."""
    handlers = getattr(samplers_module, "SCHEDULER_HANDLERS", None)
    names = getattr(samplers_module, "SCHEDULER_NAMES", None)
    if handlers is None or names is None:
        log.warning("this ComfyUI has no SCHEDULER_HANDLERS; learned schedules are only available through "
                    "the Learned Sigmas node")
        return []
    added = []
    for filename in folder_paths.get_filename_list(FOLDER):
        name = scheduler_name(filename)
        if name in handlers:
            continue

        def handler(model_sampling, steps, filename=filename):
            path = folder_paths.get_full_path(FOLDER, filename)
            if path is None:
                raise LearnedSolverFileError(f"{filename}: the learned schedule's file is no longer in "
                                             f"models/{FOLDER}")
            return schedule_for_model(path, model_sampling, steps)

        handlers[name] = samplers_module.SchedulerHandler(handler, use_ms=True)
        names.append(name)
        added.append(name)
    return added


__all__ = [
    "FOLDER",
    "ModelFamilyError",
    "model_facts",
    "sampling_facts",
    "sigmas_for_model",
    "new_file_path",
    "parse_nfes",
    "preset_files",
    "register_folder",
    "register_schedulers",
    "schedule_for_model",
    "scheduler_name",
    "solver_choices",
    "solver_path",
]
