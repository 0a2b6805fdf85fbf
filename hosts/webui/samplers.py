"""Learned-solver files inside Stable Diffusion WebUI (Forge; AUTOMATIC1111 1.9 and later):
a Schedule type and a Sampler entry for every file in ``models/learned_solvers`` and every
shipped preset, and the infotext field that names the file an image was made with.

WebUI's own modules are passed in (``register(modules, ...)`` takes any object with the
attributes ``sd_schedulers``, ``sd_samplers``, ``sd_samplers_common`` and
``sd_samplers_kdiffusion``), so everything here is tested without WebUI;
``scripts/learned_solvers_webui.py`` is the glue that passes them.

What WebUI expects (the same in Forge and A1111): a schedule is
``function(n, sigma_min, sigma_max, inner_model, device)`` -> sigmas [n + 1] ending in 0 (host
sigmas: k-diffusion's for eps and v models, flow time for flow models); a sampler is a
k-diffusion function ``fn(model, x, sigmas, extra_args, callback, disable)`` run by its
``KDiffusionSampler``. img2img and the hires pass cut the tail off the grid themselves, and the
sampler picks the matching tail of the coefficients (``LearnedSolver.options_for``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os

import torch

from ...schedules.files import EXTENSION, FOLDER, PRESETS, LearnedSolverFileError, load_learned_solver
from ...schedules.solver import ModelFamilyError

LABEL_PREFIX = "Learned: "
NAME_PREFIX = "learned_"
PRESET_FOLDER = "preset"
INFOTEXT_KEY = "Learned solver"
HASH_LENGTH = 10  # hex digits of the file's sha256 in the infotext, as WebUI shortens model hashes
log = logging.getLogger("learned_solvers")


@dataclasses.dataclass(frozen=True)
class Entry:
    """One learned-solver file as WebUI shows it. label: the dropdown text and the infotext
    value ("Learned: portraits/v2"); name: the schedule's name and the sampler's alias
    ("learned_portraits/v2"); path: the file."""

    label: str
    name: str
    path: str


def file_hash(path: str) -> str:
    """The first ``HASH_LENGTH`` hex digits of the file's sha256 (it is kilobytes)."""
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()[:HASH_LENGTH]


def _files(folder: str) -> list:
    """(stem, path) of every learned-solver file under ``folder``, subfolders included, sorted;
    the stem is the path below ``folder`` without the extension, with '/' between folders."""
    found = []
    if not folder or not os.path.isdir(folder):
        return found
    for root, dirs, names in os.walk(folder, followlinks=True):
        dirs.sort()
        for name in sorted(names):
            if name.endswith(EXTENSION) and not name.startswith("."):
                path = os.path.join(root, name)
                stem = os.path.relpath(path, folder)[: -len(EXTENSION)].replace(os.sep, "/")
                found.append((stem, path))
    return found


def list_entries(folder: str, reserved=()) -> tuple:
    """(entries, problems): an ``Entry`` per valid file in ``folder`` (the user's, first) and per
    shipped preset (``preset/<name>``), and one line per file left out and why.

    Every file is read and checked (``load_learned_solver``), so a broken one is left out here
    instead of failing a generation. Spaces in names become '_': WebUI splits a sampler name
    that ends in " <schedule name>" into sampler and schedule, so a label has no space but the
    one after "Learned:"; a stem equal to one of ``reserved`` (the host's schedule names,
    labels and aliases) gets " (file)" appended for the same reason.
    """
    reserved = set(reserved)
    entries, problems, labels = [], [], set()
    sources = _files(folder) + [(f"{PRESET_FOLDER}/{stem}", path) for stem, path in _files(PRESETS)]
    for stem, path in sources:
        stem = stem.replace(" ", "_")
        shown = f"{stem} (file)" if stem in reserved else stem
        label = LABEL_PREFIX + shown
        if label in labels:
            problems.append(f"{path}: skipped, another file already shows as {label!r}; rename one of them")
            continue
        try:
            load_learned_solver(path)
        except LearnedSolverFileError as err:
            problems.append(f"{path}: skipped: {err}")
            continue
        labels.add(label)
        entries.append(Entry(label=label, name=NAME_PREFIX + stem, path=path))
    return entries, problems


def registered_entries(modules) -> list:
    """The ``Entry`` of every learned schedule registered in WebUI now (what ``register`` added)."""
    entries = (getattr(scheduler.function, "learned_entry", None) for scheduler in modules.sd_schedulers.schedulers)
    return [entry for entry in entries if entry is not None]


def entry_for(modules, path: str):
    """The registered ``Entry`` of the file at ``path`` (None when it is not registered)."""
    target = os.path.realpath(path)
    return next((e for e in registered_entries(modules) if os.path.realpath(e.path) == target), None)


def model_convention(inner_model) -> str:
    """"flow" or "ve" for WebUI's k-diffusion model wrapper. Forge: its ``predictor``, 'const'
    prediction for flow models. A1111: its CompVis wrappers (eps and v models) are "ve", SD3's
    wrapper (a DiscreteSchedule over flow time, its model ``is_sd3``) is "flow"."""
    predictor = getattr(inner_model, "predictor", None)
    if predictor is not None:
        return "flow" if getattr(predictor, "prediction_type", None) == "const" else "ve"
    return "flow" if getattr(getattr(inner_model, "inner_model", None), "is_sd3", False) else "ve"


def schedule_function(entry: Entry):
    """WebUI's schedule function for ``entry``: the file's grid for ``n`` steps on the model's
    sigma range (remapped, with a logged warning, when it was fitted on another range; a file
    for the other kind of model refused with ``ModelFamilyError``). The file is read at each
    use, so a replaced file takes effect at once."""

    def learned_schedule(n, sigma_min, sigma_max, inner_model=None, device="cpu"):
        solver = load_learned_solver(entry.path)
        sigmas, notes = solver.schedule(int(n), sigma_range=(float(sigma_min), float(sigma_max)),
                                        convention=model_convention(inner_model))
        for note in notes:
            log.warning("%s: %s", entry.label, note)
        return sigmas.float().to(device)

    learned_schedule.learned_entry = entry  # what the infotext names
    return learned_schedule


def sampler_function(entry: Entry):
    """The k-diffusion sampler for ``entry``: the file's coefficients for the grid it is given
    (the whole fitted grid, or its tail in img2img and the hires pass), or the plain base
    solver with a logged warning on any other grid."""

    def sample_learned_solver(model, x, sigmas, extra_args=None, callback=None, disable=None):
        solver = load_learned_solver(entry.path)
        convention = model_convention(getattr(model, "inner_model", None))
        if convention != solver.convention:
            raise ModelFamilyError(f"{entry.label} was fitted for a {solver.convention} model, but this model is "
                                   f"{convention}; distill one for this model")
        sampler = solver.k_sampler(warn=lambda note: log.warning("%s: %s", entry.label, note))
        # A1111 hands a schedule's sigmas over on the CPU, whatever the latent's device
        return sampler(model, x, torch.as_tensor(sigmas).to(x.device), extra_args, callback, disable)

    return sample_learned_solver


def host_schedules(sd_schedulers, inner_model, sigma_min: float, sigma_max: float) -> dict:
    """WebUI's own schedules for this model (what its Schedule type menu offers), name -> (steps
    -> sigmas [steps + 1], float64), learned and "Automatic" entries left out: the built-ins a
    fit is scored against and may start from. A schedule that fails for this model (one that
    needs another model family) is left out."""
    def make(scheduler):
        def sigmas(steps):
            kwargs = {"n": int(steps), "sigma_min": sigma_min, "sigma_max": sigma_max, "device": "cpu"}
            if scheduler.need_inner_model:
                kwargs["inner_model"] = inner_model
            return torch.as_tensor(scheduler.function(**kwargs)).detach().to("cpu", torch.float64)
        return sigmas

    chosen = {}
    for scheduler in sd_schedulers.schedulers:
        if scheduler.function is None or str(scheduler.name).startswith(NAME_PREFIX):
            continue
        function = make(scheduler)
        try:
            function(4)
        except Exception as err:  # noqa: BLE001 - a host schedule this model cannot use is skipped
            log.debug("schedule %s left out: %s", scheduler.label, err)
            continue
        chosen[scheduler.label] = function
    return chosen


def _host_schedule_names(sd_schedulers) -> set:
    names = set()
    for scheduler in sd_schedulers.schedulers:
        if not str(scheduler.name).startswith(NAME_PREFIX):
            names |= {scheduler.name, scheduler.label, *(scheduler.aliases or [])}
    return names


def register(modules, folder: str) -> list:
    """Add a Schedule type and a Sampler for every valid file (``list_entries``) not registered
    yet; returns the labels added. Files left out are logged with the reason. Call again after
    a file was saved: what is there already stays (a removed file's entries fail with a clear
    message when used), new files are added.

    The sampler's own schedule is its file's grid (WebUI's "Automatic"); any other schedule
    runs the plain base solver on that grid, with a warning."""
    sd_schedulers, sd_samplers = modules.sd_schedulers, modules.sd_samplers
    entries, problems = list_entries(folder, _host_schedule_names(sd_schedulers))
    for problem in problems:
        log.warning("learned solvers: %s", problem)
    added = []
    sampler_names = {data.name for data in sd_samplers.all_samplers}
    for entry in entries:
        if entry.name not in sd_schedulers.schedulers_map:
            scheduler = sd_schedulers.Scheduler(entry.name, entry.label, schedule_function(entry),
                                                need_inner_model=True)
            sd_schedulers.schedulers.append(scheduler)
            # in place: other modules hold references to this dict
            sd_schedulers.schedulers_map[entry.name] = scheduler
            sd_schedulers.schedulers_map[entry.label] = scheduler
        if entry.label not in sampler_names:
            function = sampler_function(entry)
            kdiffusion = modules.sd_samplers_kdiffusion
            data = modules.sd_samplers_common.SamplerData(
                entry.label, lambda model, function=function: kdiffusion.KDiffusionSampler(function, model),
                [entry.name], {"scheduler": entry.name})
            sd_samplers.all_samplers.append(data)
            sd_samplers.all_samplers_map[data.name] = data
            sampler_names.add(entry.label)
            added.append(entry.label)
    if added:
        sd_samplers.set_samplers()
        cached = getattr(sd_samplers, "get_sampler_and_scheduler", None)
        if hasattr(cached, "cache_clear"):  # a cache of name lookups
            cached.cache_clear()
        log.info("learned solvers: added %s", ", ".join(added))
    return added


# WebUI's sampler and schedule menus on its page, by elem_id (the hires pass's start with "Use same")
MENU_IDS = ("txt2img_sampling", "img2img_sampling", "txt2img_scheduler", "img2img_scheduler", "hr_sampler",
            "hr_scheduler")


def menu_choices(modules) -> dict:
    """The choices each of WebUI's sampler and schedule menus (``MENU_IDS``) has now, as WebUI
    builds them, so a page updated with them shows files added since it was built."""
    samplers = list(modules.sd_samplers.visible_sampler_names())
    schedules = [scheduler.label for scheduler in modules.sd_schedulers.schedulers]
    return {"txt2img_sampling": samplers, "img2img_sampling": samplers, "txt2img_scheduler": schedules,
            "img2img_scheduler": schedules, "hr_sampler": ["Use same sampler"] + samplers,
            "hr_scheduler": ["Use same scheduler"] + schedules}


def infotext_fields(modules, *choices) -> dict:
    """The infotext field naming the learned solvers among ``choices`` (the sampler and schedule
    names of a generation, its hires pass's included; None and other names are ignored):
    {"Learned solver": "Learned: x [hash]"}, or {} when none is learned. A learned sampler and
    its schedule share their label, so the two name one file."""
    schedulers_map = modules.sd_schedulers.schedulers_map
    used = []
    for choice in choices:
        entry = getattr(getattr(schedulers_map.get(choice), "function", None), "learned_entry", None) if choice else None
        if entry is None:
            continue
        text = entry.label + (f" [{file_hash(entry.path)}]" if os.path.isfile(entry.path) else " [file missing]")
        if text not in used:
            used.append(text)
    return {INFOTEXT_KEY: ", ".join(used)} if used else {}


__all__ = [
    "Entry",
    "FOLDER",
    "INFOTEXT_KEY",
    "LABEL_PREFIX",
    "MENU_IDS",
    "menu_choices",
    "entry_for",
    "file_hash",
    "host_schedules",
    "infotext_fields",
    "list_entries",
    "model_convention",
    "register",
    "registered_entries",
    "sampler_function",
    "schedule_function",
]
