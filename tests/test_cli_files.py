"""The command line's file commands: inspect, validate, export, pull, push."""

import json

import pytest
from helpers import hub_cache

from learned_solvers.__main__ import main
from learned_solvers.distill import NoiseLevels, distill
from learned_solvers.learned_samplers import GaussianMixtureDenoiser
from learned_solvers.schedules import load_learned_solver, save_learned_solver

SHAPE = (2, 8, 8)


@pytest.fixture(scope="module")
def solver_file(tmp_path_factory):
    model = GaussianMixtureDenoiser.power_law(shape=SHAPE, components=4, seed=0)
    solver = distill(model, SHAPE, levels=NoiseLevels(0.0291675, 14.6146412, convention="ve"),
                     nfe=[4, 6], method="dode", samples=8, validation=4, teacher_steps=16)
    return save_learned_solver(solver, tmp_path_factory.mktemp("fit") / "mix", metadata={"author": "A. Artist"})


def test_inspect_prints_metadata_and_writes_the_png(solver_file, tmp_path, capsys):
    png = tmp_path / "grid.png"
    assert main(["inspect", solver_file, "--png", str(png)]) == 0
    out = capsys.readouterr().out
    assert "author           A. Artist" in out and "NFE 4 sigmas: 14.6146" in out
    from PIL import Image

    assert Image.open(png).size[0] > 100


def test_validate_reports_each_file_and_fails_on_a_bad_one(solver_file, tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x80\x04 pickle")
    assert main(["validate", solver_file]) == 0
    assert main(["validate", solver_file, str(bad)]) == 1
    out = capsys.readouterr().out
    assert out.count("ok       ") == 2 and "invalid  bad.safetensors:" in out


def test_export_prints_the_sigmas_and_warns_on_remap_and_interpolation(solver_file, capsys):
    assert main(["export", solver_file, "--format", "json"]) == 0
    exported = json.loads(capsys.readouterr().out)
    assert exported == [float(s) for s in load_learned_solver(solver_file).sigmas(4)]
    assert main(["export", solver_file, "--steps", "5", "--sigma-range", "0.002", "80"]) == 0
    captured = capsys.readouterr()
    values = [float(v) for v in captured.out.split(",")]
    assert len(values) == 6 and values[0] == pytest.approx(80) and values[-1] == 0
    assert "interpolated" in captured.err and "remapped" in captured.err
    assert main(["export", solver_file, "--steps", "2", "--denoise", "0.5"]) == 0
    assert len(capsys.readouterr().out.split(",")) == 3


def test_pull_from_the_offline_cache_and_push_while_offline(solver_file, tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants

    cache = hub_cache(tmp_path / "hub", "someone/solvers", {"mix.safetensors": open(solver_file, "rb").read()})
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", cache)
    dest = tmp_path / "dest"
    assert main(["pull", "someone/solvers", "mix.safetensors", "--dest", str(dest), "--offline"]) == 0
    assert (dest / "mix.safetensors").read_bytes() == open(solver_file, "rb").read()
    assert main(["pull", "someone/solvers", "other.safetensors", "--dest", str(dest), "--offline"]) == 1
    assert "not in the local Hugging Face cache" in capsys.readouterr().err

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert main(["push", solver_file, "someone/solvers"]) == 1
    assert "cannot push to someone/solvers" in capsys.readouterr().err
