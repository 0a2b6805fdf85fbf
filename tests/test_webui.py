"""The WebUI entries (``hosts.webui.samplers``) against stand-ins for WebUI's modules: what the real
Forge test (``test_webui_server.py``) cannot reach cheaply, checked without WebUI."""

from __future__ import annotations

import dataclasses
import functools
import logging
import shutil
import types
from collections import namedtuple
from pathlib import Path

import pytest
import torch

from learned_solvers.learned_samplers import GaussianMixtureDenoiser, sample_learned
from learned_solvers.schedules import files
from learned_solvers.hosts.webui import samplers as webui
from learned_solvers.schedules.files import load_learned_solver
from learned_solvers.schedules.solver import ModelFamilyError

PRESET = Path(files.PRESETS) / "test_unet_nfe4.safetensors"
SamplerData = namedtuple("SamplerData", ["name", "constructor", "aliases", "options"])


@dataclasses.dataclass
class Scheduler:  # WebUI's modules/sd_schedulers.Scheduler
    name: str
    label: str
    function: object
    default_rho: float = -1
    need_inner_model: bool = False
    aliases: list = None


class KDiffusionSampler:
    def __init__(self, func, model):
        self.func, self.model = func, model


def fake_webui():
    """Stand-ins with the attributes ``webui.register`` uses, holding WebUI's Karras schedule and
    one sampler."""
    karras = Scheduler("karras", "Karras", lambda **_: None, default_rho=7.0)
    sd_schedulers = types.SimpleNamespace(Scheduler=Scheduler, schedulers=[karras],
                                          schedulers_map={"karras": karras, "Karras": karras})
    euler = SamplerData("Euler", None, ["k_euler"], {})
    calls = []

    @functools.cache
    def get_sampler_and_scheduler(sampler, scheduler):
        return sampler, scheduler

    sd_samplers = types.SimpleNamespace(all_samplers=[euler], all_samplers_map={"Euler": euler},
                                        set_samplers=lambda: calls.append("set_samplers"),
                                        get_sampler_and_scheduler=get_sampler_and_scheduler, calls=calls)
    return types.SimpleNamespace(sd_schedulers=sd_schedulers, sd_samplers=sd_samplers,
                                 sd_samplers_common=types.SimpleNamespace(SamplerData=SamplerData),
                                 sd_samplers_kdiffusion=types.SimpleNamespace(KDiffusionSampler=KDiffusionSampler))


def test_every_valid_file_and_the_presets_become_a_schedule_and_a_sampler_once(tmp_path, caplog):
    (tmp_path / "sub").mkdir()
    shutil.copy(PRESET, tmp_path / "sub" / "my portraits.safetensors")
    shutil.copy(PRESET, tmp_path / "karras.safetensors")  # the name of a WebUI schedule
    (tmp_path / "broken.safetensors").write_bytes(b"\x00" * 40)
    (tmp_path / "notes.txt").write_text("not a solver")
    host = fake_webui()
    with caplog.at_level(logging.WARNING, logger="learned_solvers"):
        added = webui.register(host, str(tmp_path))
    assert added == ["Learned: karras (file)", "Learned: sub/my_portraits", "Learned: preset/test_unet_nfe4"]
    assert "broken.safetensors: skipped" in caplog.text
    schedules = host.sd_schedulers.schedulers_map
    for label in added:
        assert schedules[label].need_inner_model and schedules[label].label == label
        data = host.sd_samplers.all_samplers_map[label]
        # the sampler's own ("Automatic") schedule is its file's grid
        assert schedules[data.options["scheduler"]] is schedules[label]
        # WebUI splits "<sampler> <schedule name>": no label ends in " " + a schedule's name
        assert not any(label.endswith(" " + name) for name in ("karras", "Karras"))
    assert host.sd_samplers.calls == ["set_samplers"]
    # what a saved file shows as is read off the registration, " (file)" included
    assert webui.entry_for(host, str(tmp_path / "karras.safetensors")).label == "Learned: karras (file)"
    assert [e.label for e in webui.registered_entries(host)] == added
    assert webui.entry_for(host, str(tmp_path / "broken.safetensors")) is None
    assert webui.register(host, str(tmp_path)) == []  # nothing twice
    assert len(host.sd_schedulers.schedulers) == 4 and len(host.sd_samplers.all_samplers) == 4
    shutil.copy(PRESET, tmp_path / "new.safetensors")
    assert webui.register(host, str(tmp_path)) == ["Learned: new"]


def test_a_missing_folder_still_lists_the_presets():
    entries, problems = webui.list_entries("/no/such/folder")
    assert [e.label for e in entries] == ["Learned: preset/test_unet_nfe4"] and problems == []


class Predictor:
    def __init__(self, prediction_type):
        self.prediction_type = prediction_type


def test_the_schedule_is_the_files_grid_on_the_models_range_and_refuses_a_flow_model(caplog):
    entry = webui.list_entries("/no/such/folder")[0][0]
    schedule = webui.schedule_function(entry)
    solver = load_learned_solver(PRESET)
    low, high = solver.sigma_range
    eps_model = types.SimpleNamespace(predictor=Predictor("epsilon"))
    sigmas = schedule(n=4, sigma_min=low, sigma_max=high, inner_model=eps_model, device="cpu")
    assert sigmas.dtype == torch.float32 and torch.allclose(sigmas.double(), solver.sigmas(4), rtol=1e-6)
    with caplog.at_level(logging.WARNING, logger="learned_solvers"):
        remapped = schedule(n=4, sigma_min=0.1, sigma_max=10.0, inner_model=None, device="cpu")  # A1111's old range
    assert float(remapped[0]) == pytest.approx(10.0) and "remapped" in caplog.text
    with pytest.raises(ModelFamilyError, match="distill one"):
        schedule(n=4, sigma_min=0.001, sigma_max=1.0, inner_model=types.SimpleNamespace(predictor=Predictor("const")),
                 device="cpu")


def test_the_model_kind_is_read_off_forges_predictor_and_a1111s_wrappers():
    assert webui.model_convention(types.SimpleNamespace(predictor=Predictor("epsilon"))) == "ve"
    assert webui.model_convention(types.SimpleNamespace(predictor=Predictor("v_prediction"))) == "ve"
    assert webui.model_convention(types.SimpleNamespace(predictor=Predictor("const"))) == "flow"
    a1111_sd15 = types.SimpleNamespace(inner_model=types.SimpleNamespace(parameterization="eps"))
    a1111_sd3 = types.SimpleNamespace(inner_model=types.SimpleNamespace(parameterization="eps", is_sd3=True))
    assert webui.model_convention(a1111_sd15) == "ve" and webui.model_convention(a1111_sd3) == "flow"
    assert webui.model_convention(None) == "ve"


def test_the_sampler_is_the_packages_sampler_with_the_files_coefficients_and_their_tail():
    entry = webui.list_entries("/no/such/folder")[0][0]
    solver = load_learned_solver(PRESET)
    model = GaussianMixtureDenoiser.power_law(shape=(4, 8, 8))
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * solver.sigmas(4)[0]
    sample = webui.sampler_function(entry)
    sigmas = solver.sigmas(4).float()
    expected = sample_learned(model, x, sigmas, **solver.sampler_options(4))
    assert torch.equal(sample(model, x, sigmas), expected)
    plain = sample_learned(model, x, sigmas, base=solver.base, convention="ve", corrector=solver.corrector)
    assert not torch.allclose(expected, plain)
    tail = sigmas[1:]  # img2img: WebUI cuts the tail off the grid itself
    options, notes = solver.options_for(tail)
    assert notes == [] and torch.equal(sample(model, x, tail), sample_learned(model, x, tail, **options))
    flow_model = types.SimpleNamespace(inner_model=types.SimpleNamespace(predictor=Predictor("const")))
    with pytest.raises(ModelFamilyError):
        sample(flow_model, x, sigmas)


def test_the_infotext_names_each_learned_file_once_with_its_hash(tmp_path):
    host = fake_webui()
    webui.register(host, str(tmp_path))
    label = "Learned: preset/test_unet_nfe4"
    fields = webui.infotext_fields(host, label, label, "Use same sampler", None)
    assert fields == {"Learned solver": f"{label} [{webui.file_hash(str(PRESET))}]"}
    assert webui.infotext_fields(host, "Euler", "Karras") == {}
    assert len(webui.file_hash(str(PRESET))) == webui.HASH_LENGTH


# --- the fit inside WebUI's processing (``hosts.webui.fitting``), against stand-ins --------------------

from learned_solvers.hosts.webui import fitting  # noqa: E402
from learned_solvers.distill.discrete import is_discrete  # noqa: E402
from learned_solvers.schedules.grids import discrete_vp_sigmas  # noqa: E402


class Multicond:  # WebUI's prompt_parser.MulticondLearnedConditioning
    def __init__(self, shape, batch):
        self.shape, self.batch = shape, batch


def test_one_prompts_conditioning_is_repeated_for_a_batch_and_copied_out_of_inference_mode():
    with torch.inference_mode():
        cond = Multicond((1,), [[types.SimpleNamespace(schedules=[torch.ones(77, 8)], weight=1.0)]])
        args = {"cond": cond, "uncond": [[torch.zeros(77, 8)]], "image_cond": torch.zeros(1, 5, 1, 1),
                "cond_scale": 5.0, "s_min_uncond": 0.0}
    copied = fitting._ordinary(args)
    assert not copied["cond"].batch[0][0].schedules[0].is_inference() and not copied["image_cond"].is_inference()
    assert args["cond"].batch[0][0].schedules[0].is_inference()  # the original is left as it was
    repeated = fitting.conditioning_for(copied, [0] * 3)
    assert repeated["cond"].shape == (3,) and len(repeated["cond"].batch) == 3 and len(repeated["uncond"]) == 3
    assert repeated["image_cond"].shape == (3, 5, 1, 1) and repeated["cond_scale"] == 5.0
    assert len(copied["cond"].batch) == 1  # repeating makes a new object


def test_each_sample_gets_its_own_prompts_conditioning():
    cond = Multicond((3,), [["a cat"], ["a dog"], ["a fox"]])
    args = {"cond": cond, "uncond": [["no"], ["no"], ["no"]], "image_cond": torch.arange(3.0).reshape(3, 1),
            "cond_scale": 5.0}
    picked = fitting.conditioning_for(args, [2, 0, 2, 1])
    assert picked["cond"].batch == [["a fox"], ["a cat"], ["a fox"], ["a dog"]] and picked["cond"].shape == (4,)
    assert len(picked["uncond"]) == 4 and picked["image_cond"].flatten().tolist() == [2.0, 0.0, 2.0, 1.0]
    assert cond.batch == [["a cat"], ["a dog"], ["a fox"]]


def test_the_weights_stay_out_of_autograd_during_the_fit_and_come_back_as_they_were():
    network = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 1))
    network[1].weight.requires_grad_(False)
    with torch.inference_mode():
        frozen_inference = torch.nn.Linear(3, 3)  # weights made in inference mode, as WebUI may load them
    network.append(frozen_inference)
    originals = [p for p in network.parameters()]
    flags = [p.requires_grad for p in originals]
    with fitting.frozen_weights(network):
        assert not any(p.requires_grad or p.is_inference() for p in network.parameters())
        x = torch.randn(2, 3, requires_grad=True)
        network[2](network[0](x)).sum().backward()  # an inference weight would fail here
        assert x.grad is not None and all(p.grad is None for p in network.parameters())
    assert [p for p in network.parameters()] == originals and [p.requires_grad for p in originals] == flags


class DiscretePredictor:  # Forge's k_prediction.Prediction: nearest training step
    prediction_type = "epsilon"

    def __init__(self):
        self.sigmas = discrete_vp_sigmas().float()
        self.log_sigmas = self.sigmas.log()

    def timestep(self, sigma):
        return (sigma.log()[None] - self.log_sigmas[:, None]).abs().argmin(dim=0).view(sigma.shape)


def test_a_discrete_models_timestep_is_fractional_during_the_fit_and_restored_after():
    predictor = DiscretePredictor()
    assert is_discrete(predictor.timestep, predictor.sigmas)
    assert not is_discrete(lambda sigma: sigma * 1000, torch.linspace(0.001, 1, 1000))  # flow time
    sigma = torch.tensor([1.0], requires_grad=True)
    with fitting.fractional_steps(predictor) as table:
        assert table is not None and len(table) == 1000
        t = predictor.timestep(sigma)
        t.sum().backward()
        assert sigma.grad is not None and float(sigma.grad) != 0 and t.item() != round(t.item())
    assert "timestep" not in vars(predictor) and predictor.timestep(torch.tensor([1.0])).dtype == torch.long


class InterruptedException(BaseException):  # WebUI's sd_samplers_common.InterruptedException
    pass


def fake_processing(cfg_model):
    """Stand-ins for WebUI's processing: process_images runs the registered sampler the way
    KDiffusionSampler does, under inference mode, with a one-prompt conditioning."""
    host = fake_webui()
    host.sd_samplers_common.InterruptedException = InterruptedException
    host.shared = types.SimpleNamespace(sd_model=object())
    seen = {}

    class Processing:
        def __init__(self, **fields):
            self.fields = fields

    def process_images(p):
        seen["fields"] = p.fields
        data = host.sd_samplers.all_samplers_map[p.fields["sampler_name"]]
        sampler = data.constructor(cfg_model)
        prompts = p.fields["prompt"] if isinstance(p.fields["prompt"], list) else [p.fields["prompt"]]
        assert p.fields["batch_size"] == len(prompts)
        with torch.inference_mode():
            x = torch.zeros(len(prompts), 4, 8, 8)
            extra = {"cond": Multicond((len(prompts),), [[prompt] for prompt in prompts]),
                     "uncond": [["negative"]] * len(prompts), "image_cond": None, "cond_scale": 5.0,
                     "s_min_uncond": 0.0}
            try:
                out = sampler.func(sampler.model, x, torch.tensor([14.6, 0.0]), extra)
            except InterruptedException:
                out = x
        seen["out_shape"] = tuple(out.shape)

    host.processing = types.SimpleNamespace(StableDiffusionProcessingTxt2Img=Processing, process_images=process_images)
    return host, seen


class CFGModel:
    def __init__(self, interrupt_after=None):
        self.inner_model = types.SimpleNamespace(predictor=Predictor("epsilon"), sigmas=torch.tensor([0.03, 14.6]))
        self.calls, self.interrupt_after = 0, interrupt_after

    def __call__(self, x, sigma, cond, uncond, cond_scale, s_min_uncond, image_cond):
        self.calls += 1
        if self.interrupt_after is not None and self.calls > self.interrupt_after:
            raise InterruptedException
        assert len(cond.batch) == x.shape[0] == len(uncond)
        return x * 0.5


def test_the_fit_runs_on_webuis_cfg_denoiser_outside_inference_mode_and_the_driver_is_gone_after():
    model = CFGModel()
    host, seen = fake_processing(model)

    def body(denoiser, device, facts):
        assert not torch.is_inference_mode_enabled() and torch.is_grad_enabled()
        x = torch.ones(3, 4, 8, 8, requires_grad=True)
        denoiser(x, torch.full((3,), 2.0)).sum().backward()
        return facts["convention"], float(x.grad.mean()), facts["sigma_max"]

    result = fitting.run_in_webui(host, body, prompt="a cat", negative_prompt="", cfg=5, width=64, height=64, seed=1,
                                  for_gradients=True, override_settings={"emphasis": "None"})
    assert result == ("ve", 0.5, pytest.approx(14.6)) and seen["out_shape"] == (1, 4, 8, 8)
    assert seen["fields"]["override_settings"] == {"emphasis": "None"} and seen["fields"]["do_not_save_samples"]
    assert fitting.DRIVER not in host.sd_samplers.all_samplers_map
    assert all(data.name != fitting.DRIVER for data in host.sd_samplers.all_samplers)


def test_a_list_of_prompts_is_one_processing_batch_and_each_sample_runs_with_its_own():
    model = CFGModel()
    seen_conds = []
    model_call = model.__call__

    def recording(x, sigma, cond, **kwargs):
        seen_conds.append(list(cond.batch))
        return model_call(x, sigma, cond, **kwargs)

    host, seen = fake_processing(recording)
    recording.inner_model = model.inner_model

    def body(denoiser, device, facts):
        denoiser(torch.ones(3, 4, 8, 8), torch.full((3,), 2.0), prompt=torch.tensor([1, 0, 1]))
        denoiser(torch.ones(2, 4, 8, 8), torch.full((2,), 2.0))

    fitting.run_in_webui(host, body, prompt=["a cat", "a dog"], negative_prompt="", cfg=5, width=64, height=64,
                         seed=1)
    assert seen_conds == [[["a dog"], ["a cat"], ["a dog"]], [["a cat"], ["a cat"]]]
    assert seen["out_shape"] == (2, 4, 8, 8)


def test_an_interrupt_or_a_failure_inside_the_fit_lets_webui_finish_and_is_raised_after():
    host, seen = fake_processing(CFGModel(interrupt_after=1))

    def body(denoiser, device, facts):
        for _ in range(3):
            denoiser(torch.ones(2, 4, 8, 8), torch.full((2,), 2.0))

    with pytest.raises(fitting.FitCancelled):
        fitting.run_in_webui(host, body, prompt="", negative_prompt="", cfg=5, width=64, height=64, seed=1)
    assert seen["out_shape"] == (1, 4, 8, 8)  # one latent of the prompt's batch, as WebUI expects
    host, seen = fake_processing(CFGModel())

    def failing(denoiser, device, facts):
        raise FloatingPointError("the teacher run produced NaN")

    with pytest.raises(FloatingPointError, match="NaN"):
        fitting.run_in_webui(host, failing, prompt="", negative_prompt="", cfg=5, width=64, height=64, seed=1)
    assert seen["out_shape"] == (1, 4, 8, 8) and fitting.DRIVER not in host.sd_samplers.all_samplers_map


def test_a_distill_request_is_checked_before_any_work():
    request = fitting.parse_request({"prompt": "a cat", "nfe": [6, 4], "cfg_scale": 6, "iterations": 10,
                                     "override_settings": {"CLIP_stop_at_last_layers": 2}})
    assert request["nfe"] == [4, 6] and request["cfg"] == 6.0 and request["name"] == "webui_nfe4_6"
    assert request["override_settings"] == {"CLIP_stop_at_last_layers": 2} and request["iterations"] == 10
    assert request["memory"] == "auto" and request["prompt"] == "a cat"
    assert fitting.parse_request({"prompt_list": "a dog\n\n  a fox \n"})["prompt"] == ["", "a dog", "a fox"]
    assert fitting.parse_request({"prompt": "a cat", "prompt_list": ["a dog", " "]})["prompt"] == ["a cat", "a dog"]
    for body, words in (({"prompt_list": [1]}, "prompt_list must be"), ({"prompt_list": "x\n" * 64}, "at most 63"),({"nfe": "0"}, "between 2"), ({"height": 4000}, "multiple of 8"), ({"steps": 3}, "unknown"),
                        ({"iterations": 0}, "at least 1"), ({"method": "magic"}, "unknown method"),
                        ({"cfg_scale": "x"}, "cfg_scale"), ({"override_settings": [1]}, "override_settings"),
                        ({"memory": "lots"}, "memory must be one of")):
        with pytest.raises(ValueError, match=words):
            fitting.parse_request(body)


def test_the_memory_mode_follows_the_networks_size_as_in_comfyui():
    from learned_solvers.distill.memory import LARGE_MODEL_BYTES, memory_plan

    assert memory_plan("auto", LARGE_MODEL_BYTES - 1)["memory"] == "model calls"
    big = memory_plan("auto", LARGE_MODEL_BYTES)
    assert big == {"memory": "blocks", "inference_batch_size": 2, "dode_samples": 4, "micro_batch": 2}
    assert memory_plan("blocks", 0)["memory"] == "blocks"
    with pytest.raises(ValueError, match="unknown memory mode"):
        memory_plan("lots", 0)
