"""Test-only WebUI extension: the package's own sampler, outside the extension's glue.

"Reference: package sampler" is ``LearnedSolver.sampler(nfe)`` of the shipped preset (the
package's sampler with the file's coefficients bound); "Reference: plain base" is the same
base solver with no learned coefficients. The WebUI tests run them on the learned schedule and
compare their results with the extension's own entries'. The random-weight test checkpoint
decodes every latent to a black image, so each sampling run's latent is recorded (its sha256
and norm) and served at ``/learned-solvers-reference/v1/last``. ``LEARNED_SOLVERS_ROOT`` names
the package folder.
"""

import functools
import hashlib
import importlib.util
import os
import sys

root = os.environ["LEARNED_SOLVERS_ROOT"]
if "learned_solvers" not in sys.modules:
    spec = importlib.util.spec_from_file_location("learned_solvers", os.path.join(root, "__init__.py"),
                                                  submodule_search_locations=[root])
    sys.modules["learned_solvers"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sys.modules["learned_solvers"])

from learned_solvers.learned_samplers import sample_learned  # noqa: E402
from learned_solvers.schedules.files import load_learned_solver  # noqa: E402
from modules import script_callbacks, sd_samplers, sd_samplers_common, sd_samplers_kdiffusion  # noqa: E402

preset = load_learned_solver(os.path.join(root, "schedules", "presets", "test_unet_nfe4.safetensors"))
functions = {
    "Reference: package sampler": preset.sampler(4),
    "Reference: plain base": functools.partial(sample_learned, base=preset.base, convention=preset.convention,
                                               corrector=preset.corrector),
}
for label, function in functions.items():
    data = sd_samplers_common.SamplerData(
        label, lambda model, function=function: sd_samplers_kdiffusion.KDiffusionSampler(function, model), [], {})
    sd_samplers.all_samplers.append(data)
    sd_samplers.all_samplers_map[label] = data
sd_samplers.set_samplers()

last = {}
launch_sampling = sd_samplers_common.Sampler.launch_sampling


def recording_launch_sampling(self, steps, func):
    samples = launch_sampling(self, steps, func)
    values = samples.detach().float().cpu().contiguous()
    finite = bool(values.isfinite().all())
    last.update(digest=hashlib.sha256(values.numpy().tobytes()).hexdigest(), finite=finite,
                norm=float(values.norm()) if finite else None, shape=list(values.shape))
    return samples


sd_samplers_common.Sampler.launch_sampling = recording_launch_sampling


def routes(_demo, app):
    app.add_api_route("/learned-solvers-reference/v1/last", lambda: dict(last), methods=["GET"])


script_callbacks.on_app_started(routes)
