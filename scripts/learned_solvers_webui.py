"""Stable Diffusion WebUI (Forge; AUTOMATIC1111 1.9 and later) entry point: WebUI imports every
``scripts/*.py`` of an extension at start-up, ComfyUI only the folder's ``__init__.py``.

Glue only: it loads this folder as the ``learned_solvers`` package, hands WebUI's modules to
``learned_solvers.hosts.webui.samplers`` and ``learned_solvers.hosts.webui.fitting`` (which hold the
logic) and adds what WebUI asks of an extension: the entries at start-up, the API routes
(rescan the folder; distill for the loaded checkpoint), and the infotext.
"""

import importlib.util
import os
import sys
import types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_package():
    """This folder as the package ``learned_solvers`` (its imports are relative, so the folder's
    own name does not matter; an installed copy already imported is used as it is)."""
    if "learned_solvers" not in sys.modules:
        spec = importlib.util.spec_from_file_location("learned_solvers", os.path.join(ROOT, "__init__.py"),
                                                      submodule_search_locations=[ROOT])
        package = importlib.util.module_from_spec(spec)
        sys.modules["learned_solvers"] = package
        spec.loader.exec_module(package)
    return sys.modules["learned_solvers"]


_load_package()

from learned_solvers.hosts.webui import fitting  # noqa: E402
from learned_solvers.distill.cost import progress_text  # noqa: E402
from learned_solvers.distill.settings import RunHooks  # noqa: E402
from learned_solvers.hosts.webui import samplers as webui  # noqa: E402
from learned_solvers.schedules.files import new_file_path, save_learned_solver  # noqa: E402
from modules import (paths, processing, script_callbacks, scripts, sd_samplers, sd_samplers_common,  # noqa: E402
                     sd_samplers_kdiffusion, sd_schedulers, shared)

WEBUI = types.SimpleNamespace(sd_schedulers=sd_schedulers, sd_samplers=sd_samplers, processing=processing,
                              shared=shared, sd_samplers_common=sd_samplers_common,
                              sd_samplers_kdiffusion=sd_samplers_kdiffusion)
FOLDER = os.path.join(paths.models_path, webui.FOLDER)


def refresh() -> list:
    """Register the files now in ``models/learned_solvers``; returns the labels added."""
    os.makedirs(FOLDER, exist_ok=True)
    return webui.register(WEBUI, FOLDER)


refresh()


def _network():
    """The loaded checkpoint's network (Forge: the UNet patcher's model; A1111: the wrapper)."""
    model = shared.sd_model
    forge = getattr(model, "forge_objects", None)
    return forge.unet.model if forge is not None else model.model


def _model_facts() -> dict:
    model = shared.sd_model
    info = getattr(model, "sd_checkpoint_info", None)
    return {"family": type(model).__name__, "checkpoint": getattr(info, "name_for_extra", None),
            "checkpoint_hash": getattr(info, "shorthash", None)}


def _progress(step, total, loss, held_out, seconds_left):
    shared.state.sampling_steps, shared.state.sampling_step = int(total), int(step)
    shared.state.textinfo = progress_text(step, total, loss, held_out, seconds_left)


def fit_and_save(body: dict) -> tuple:
    """Fit for the loaded checkpoint (``fitting.parse_request``'s fields), save the file into
    models/learned_solvers and register it: (the answer, the solver). WebUI's Interrupt stops
    the fit and nothing is saved. Raises ValueError (a bad request), ``fitting.FitCancelled``,
    PermissionError (the folder cannot be written, checked before the fit) or the fit's error."""
    from modules.call_queue import queue_lock

    request = fitting.parse_request(body)
    os.makedirs(FOLDER, exist_ok=True)
    path = new_file_path(FOLDER, request.pop("name"))
    if not os.access(FOLDER, os.W_OK):
        raise PermissionError(f"{FOLDER} is not writable; the learned solver could not be saved")
    with queue_lock:
        shared.state.begin(job="learned_solvers_distill")
        try:
            hooks = RunHooks(progress=_progress, cancel=lambda: bool(shared.state.interrupted))
            solver = fitting.distill_webui_model(WEBUI, network=_network, hooks=hooks, provenance=_model_facts,
                                                 **request)
        finally:
            shared.state.end()
    save_learned_solver(solver, path)
    added = refresh()
    entry = webui.entry_for(WEBUI, path)
    answer = {"file": path, "label": entry.label if entry else None, "added": added, "summary": solver.summary()}
    return answer, solver


def distill(body: dict) -> dict:
    """POST /learned-solvers/v1/distill: ``fit_and_save`` as an API route."""
    from fastapi import HTTPException

    try:
        return fit_and_save(body)[0]
    except ValueError as err:
        raise HTTPException(status_code=422, detail=fitting.error_advice(err)) from None
    except fitting.FitCancelled as err:
        raise HTTPException(status_code=409, detail=f"{err}; nothing was saved") from None
    except PermissionError as err:
        raise HTTPException(status_code=507, detail=str(err)) from None
    except (FloatingPointError, MemoryError, RuntimeError) as err:
        raise HTTPException(status_code=422, detail=fitting.error_advice(err)) from None


def _routes(_demo, app):
    def refresh_route():
        added = refresh()
        return {"added": added, "entries": [entry.label for entry in webui.registered_entries(WEBUI)]}

    app.add_api_route("/learned-solvers/v1/refresh", refresh_route, methods=["POST"])
    app.add_api_route("/learned-solvers/v1/distill", distill, methods=["POST"])


script_callbacks.on_app_started(_routes)

# WebUI's sampler and schedule menus, remembered as WebUI builds its page (before the tabs of
# extensions), so the tab can give them a file it has just saved
MENUS = {}


def _remember_menu(component, **kwargs):
    if kwargs.get("elem_id") in webui.MENU_IDS:
        MENUS[kwargs["elem_id"]] = component


script_callbacks.on_after_component(_remember_menu)

# the tab's inputs: (request field, label, default); numbers are whole unless their default is not
DEFAULTS = fitting.FitSettings()
TAB_FIELDS = (("prompt", "Prompt", ""),
              ("prompt_list", "More prompts (one per line)", ""),
              ("negative_prompt", "Negative prompt", ""), ("cfg_scale", "CFG scale", 7.0),
              ("width", "Width", 512), ("height", "Height", 512), ("nfe", "NFE (steps; several as 4, 6)", "4"),
              ("method", "Method", "auto"), ("base", "Base solver", "auto"), ("memory", "Memory", "auto"),
              ("samples", "Training samples", DEFAULTS.samples), ("validation", "Validation samples", DEFAULTS.validation),
              ("iterations", "Iterations", DEFAULTS.iterations), ("teacher_steps", "Teacher steps", DEFAULTS.teacher_steps),
              ("seed", "Seed", DEFAULTS.seed), ("name", "File name (in models/learned_solvers)", ""))


PLACEHOLDERS = {"prompt_list": "For a file that serves the whole model: the fit runs on the prompt and these, "
                               "trains on every second one and checks itself on the others (same cost)"}
MENU_CHOICES = {"method": list(fitting.METHODS), "base": ["auto", *fitting.BASE_SOLVERS],
                "memory": list(fitting.MEMORY_MODES)}


def _tab():
    """The "Learned Solvers" tab: ``fit_and_save`` with the Distill node's options, then the
    grid drawn against the built-ins and the comparison table."""
    import gradio as gr

    from learned_solvers.schedules import reference_schedules
    from learned_solvers.schedules.plot import solver_figure

    with gr.Blocks(analytics_enabled=False) as tab:
        with gr.Row():
            with gr.Column():
                inputs = []
                for key, label, default in TAB_FIELDS:
                    if key in ("prompt", "prompt_list", "negative_prompt"):
                        inputs.append(gr.Textbox(label=label, value=default, lines=2,
                                                 placeholder=PLACEHOLDERS.get(key)))
                    elif key in MENU_CHOICES:
                        inputs.append(gr.Dropdown(label=label, choices=MENU_CHOICES[key], value=default))
                    elif isinstance(default, str):
                        inputs.append(gr.Textbox(label=label, value=default))
                    else:
                        inputs.append(gr.Number(label=label, value=default, precision=None if isinstance(default, float)
                                                else 0))
                with gr.Row():
                    fit_button = gr.Button("Fit for the loaded checkpoint", variant="primary")
                    interrupt = gr.Button("Interrupt")
            with gr.Column():
                figure = gr.Image(label="Learned grid against the built-ins", type="pil")
                summary = gr.Textbox(label="Against the built-in solvers and schedules", lines=16)
        menus = [elem_id for elem_id in webui.MENU_IDS if elem_id in MENUS]  # updated after a fit

        def run(*values):
            """Fit in a worker thread and stream WebUI's progress text into the table until it ends."""
            import threading
            import time

            body = {key: value for (key, _, _), value in zip(TAB_FIELDS, values) if value not in ("", None)}
            outcome = {}

            def work():
                try:
                    outcome["done"] = fit_and_save(body)
                except Exception as err:  # noqa: BLE001 - shown in the tab, not lost in a thread
                    outcome["error"] = err

            worker = threading.Thread(target=work, daemon=True)
            worker.start()
            unchanged = [gr.update() for _ in menus]
            while worker.is_alive():
                yield None, shared.state.textinfo or "starting", *unchanged
                time.sleep(1)
            error = outcome.get("error")
            if isinstance(error, fitting.FitCancelled):
                yield None, "interrupted: nothing was saved", *unchanged
                return
            if error is not None:
                yield None, f"not fitted: {fitting.error_advice(error)}", *unchanged
                return
            answer, solver = outcome["done"]
            first = solver.nfes[0]
            picture = solver_figure(solver, first, reference_schedules(first, *solver.sigma_range))
            choices = webui.menu_choices(WEBUI)
            yield (picture, f"{answer['summary']}\nsaved {answer['file']}: {answer['label']!r} is now in the Sampler "
                            f"and Schedule type menus",
                   *[gr.update(choices=choices[elem_id]) for elem_id in menus])

        fit_button.click(run, inputs=inputs, outputs=[figure, summary] + [MENUS[elem_id] for elem_id in menus])
        interrupt.click(lambda: shared.state.interrupt(), inputs=[], outputs=[])
    return [(tab, "Learned Solvers", "learned_solvers")]


script_callbacks.on_ui_tabs(_tab)


class LearnedSolverInfotext(scripts.Script):
    """Writes which learned-solver file (and its hash) made an image into the infotext."""

    def title(self):
        return "Learned solvers"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def process(self, p, *args):
        p.extra_generation_params.update(webui.infotext_fields(
            WEBUI, p.sampler_name, p.scheduler, getattr(p, "hr_sampler_name", None), getattr(p, "hr_scheduler", None)))
