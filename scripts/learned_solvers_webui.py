"""Stable Diffusion WebUI (Forge; AUTOMATIC1111 1.9 and later) entry point: WebUI imports every
``scripts/*.py`` of an extension at start-up, ComfyUI only the folder's ``__init__.py``.

Glue only: it loads this folder as the ``learned_solvers`` package, hands WebUI's modules to
``learned_solvers.schedules.webui`` (which holds the logic) and adds what WebUI asks of an
extension: the entries at start-up, an API route that rescans the folder, and the infotext.
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

from learned_solvers.schedules import webui  # noqa: E402
from modules import (paths, script_callbacks, scripts, sd_samplers, sd_samplers_common,  # noqa: E402
                     sd_samplers_kdiffusion, sd_schedulers)

WEBUI = types.SimpleNamespace(sd_schedulers=sd_schedulers, sd_samplers=sd_samplers,
                              sd_samplers_common=sd_samplers_common, sd_samplers_kdiffusion=sd_samplers_kdiffusion)
FOLDER = os.path.join(paths.models_path, webui.FOLDER)


def refresh() -> list:
    """Register the files now in ``models/learned_solvers``; returns the labels added."""
    os.makedirs(FOLDER, exist_ok=True)
    return webui.register(WEBUI, FOLDER)


refresh()


def _routes(_demo, app):
    def refresh_route():
        added = refresh()
        return {"added": added, "entries": [entry.label for entry in webui.list_entries(FOLDER)[0]]}

    app.add_api_route("/learned-solvers/v1/refresh", refresh_route, methods=["POST"])


script_callbacks.on_app_started(_routes)


class LearnedSolverInfotext(scripts.Script):
    """Writes which learned-solver file (and its hash) made an image into the infotext."""

    def title(self):
        return "Learned solvers"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def process(self, p, *args):
        p.extra_generation_params.update(webui.infotext_fields(
            WEBUI, p.sampler_name, p.scheduler, getattr(p, "hr_sampler_name", None), getattr(p, "hr_scheduler", None)))
