"""The WebUI entries (``schedules.webui``) against stand-ins for WebUI's modules: what the real
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
from learned_solvers.schedules import files, webui
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
