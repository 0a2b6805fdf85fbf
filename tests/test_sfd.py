"""SFD: LoRA adapters on the shipped test UNet, their file, and the fit (CPU, no host)."""

import dataclasses
import math

import pytest
import torch

from learned_solvers.distill import FitCancelled, NoiseLevels, RunHooks
from learned_solvers.distill.lora import COMFYUI_PREFIX, LoraAdapters, lora_targets, save_lora
from learned_solvers.distill.sfd import SfdSettings, distill_network
from learned_solvers.learned_samplers import sample_learned
from learned_solvers.schedules import discrete_vp_sigmas
from learned_solvers.schedules.files import check_writable
from learned_solvers.testmodel import load_test_unet

SD15 = discrete_vp_sigmas()
LEVELS = NoiseLevels(float(SD15[0]), float(SD15[-1]), convention="ve")
QUICK = dict(samples=12, validation=6, iterations=20, teacher_steps=8, batch_size=4, validate_every=10, lr=3e-3)


@pytest.fixture(scope="module")
def unet():
    return load_test_unet()


def merged_copy(network, adapters):
    """The network with each adapter merged into its weight the way ComfyUI merges a LoRA file:
    weight += alpha / rank * (up.flatten(1) @ down.flatten(1)).reshape(weight.shape)."""
    import copy

    merged = copy.deepcopy(network)
    layers = dict(merged.named_modules())
    tensors = adapters.file_tensors(prefix="")
    with torch.no_grad():
        for name in adapters.names:
            down, up = tensors[f"{name}.lora_down.weight"], tensors[f"{name}.lora_up.weight"]
            scale = float(tensors[f"{name}.alpha"]) / down.shape[0]
            weight = layers[name].weight
            weight += scale * (up.flatten(1) @ down.flatten(1)).reshape(weight.shape)
    return merged


def test_adapters_start_as_the_network_and_equal_their_merged_weights(unet):
    adapters = LoraAdapters(unet, 4, seed=0)
    assert set(adapters.names) == set(lora_targets(unet))
    assert any(isinstance(m, torch.nn.Conv2d) for m in lora_targets(unet).values())
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([1.5, 0.3])
    with torch.no_grad():
        plain = unet(x, sigma)
        with adapters.attached():
            torch.testing.assert_close(unet(x, sigma), plain)  # up starts at zero
        for up in adapters.up:
            up.normal_(0, 0.02, generator=torch.Generator().manual_seed(up.numel()))
        with adapters.attached():
            hooked = unet(x, sigma)
            with adapters.paused():
                torch.testing.assert_close(unet(x, sigma), plain)
        assert torch.equal(unet(x, sigma), plain)  # the hooks are gone with the context
        assert not torch.allclose(hooked, plain, atol=1e-3)
        torch.testing.assert_close(hooked, merged_copy(unet, adapters)(x, sigma), atol=1e-4, rtol=1e-4)


def test_the_file_has_comfyui_keys_and_reads_back(unet, tmp_path):
    adapters = LoraAdapters(unet, 4, seed=0)
    with torch.no_grad():
        adapters.up[0].fill_(0.5)
    path = save_lora(adapters, tmp_path / "x", {"nfe": 2, "note": "text"})
    from safetensors import safe_open
    from safetensors.torch import load_file

    tensors = load_file(path)
    assert len(tensors) == 3 * len(adapters.names)
    name = adapters.names[0]
    assert tensors[f"{COMFYUI_PREFIX}{name}.lora_up.weight"].shape == adapters.up[0].shape
    assert float(tensors[f"{COMFYUI_PREFIX}{name}.alpha"]) == 4.0
    with safe_open(path, "pt") as handle:
        metadata = handle.metadata()
    assert metadata["nfe"] == "2" and metadata["note"] == "text" and metadata["format"]
    other = LoraAdapters(unet, 4, seed=5)
    other.load_file_tensors(tensors)
    assert all(torch.equal(a, b) for a, b in zip(adapters.parameters(), other.parameters()))
    with pytest.raises(ValueError, match="no lora_down of shape"):
        LoraAdapters(unet, 8).load_file_tensors(tensors)


def test_bad_settings_and_folders_are_refused_with_the_fix(unet, tmp_path):
    with pytest.raises(ValueError, match="rank must be a whole number"):
        LoraAdapters(unet, 0)
    with pytest.raises(ValueError, match="lr must be between 0 and 1"):
        SfdSettings(lr=5.0).check()
    with pytest.raises(ValueError, match="iterations must be a whole number"):
        SfdSettings(iterations=0).check()
    with pytest.raises(ValueError, match="teacher_base must be one of euler"):
        SfdSettings(teacher_base="heun").check()
    with pytest.raises(ValueError, match="inputs must be one of teacher, student, unrolled"):
        SfdSettings(inputs="noise").check()
    with pytest.raises(TypeError, match="unknown SFD setting"):
        SfdSettings().replace(ranks=4)
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OSError, match="cannot write to"):
        check_writable(blocker / "loras")


def test_sfd_beats_plain_euler_and_leaves_the_network_untouched(unet):
    weights = {k: v.clone() for k, v in unet.state_dict().items()}
    seen = []
    result = distill_network(unet, unet, unet.sample_shape, nfe=2,
                             levels=dataclasses.replace(LEVELS, sigma_table=SD15),
                             hooks=RunHooks(progress=lambda *a: seen.append(a)), **QUICK)
    assert all(torch.equal(weights[k], v) for k, v in unet.state_dict().items())
    assert all(not m._forward_hooks for m in unet.modules()) and all(p.grad is None for p in unet.parameters())
    assert result.nfe == 2 and len(result.sigmas) == 3 and float(result.sigmas[-1]) == 0
    # the fit lands closer to the teacher than plain Euler on its grid, on seeds it did not train on
    assert result.held_out["mean"] < 0.8 * result.plain["mean"]
    assert result.held_out["ratio_high"] < 1
    assert result.validation[0][0] == 0 and len(result.losses) == QUICK["iterations"]
    # the solver it samples with is Euler on that grid, and the adapters give what was measured
    fit = result.solver.fits[2]
    assert result.solver.base == "euler" and fit.method == "sfd" and torch.equal(fit.sigmas, result.sigmas)
    assert math.isfinite(result.provenance["teacher"]["residual"])
    calls = result.provenance["cost"]["calls"]
    assert calls["gradient"] == calls["backward"] == QUICK["iterations"] * QUICK["batch_size"] * 2
    # progress: teacher batches then every iteration, with a time left once the fit is timed
    assert seen[-1][0] == seen[-1][1] and math.isfinite(seen[-1][4])
    text = result.summary()
    assert "SFD LoRA rank 8" in text and "Euler at NFE 2" in text and "residual" in text


def test_cancel_stops_the_fit_and_takes_the_hooks_off(unet):
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 4

    with pytest.raises(FitCancelled):
        distill_network(unet, unet, unet.sample_shape, nfe=2, levels=LEVELS, hooks=RunHooks(cancel=cancel), **QUICK)
    assert all(not m._forward_hooks for m in unet.modules())


def test_a_given_grid_is_used_and_a_wrong_one_refused(unet):
    grid = [LEVELS.sigma_max, 2.0, 0.0]
    result = distill_network(unet, unet, unet.sample_shape, nfe=2, levels=LEVELS, grid=grid,
                             **{**QUICK, "iterations": 2})
    assert result.grid_name == "given" and result.sigmas.tolist() == pytest.approx(grid)
    with pytest.raises(ValueError, match="3 decreasing sigmas"):
        distill_network(unet, unet, unet.sample_shape, nfe=2, levels=LEVELS, grid=[14.6, 0.0], **QUICK)


def test_euler_with_the_adapters_is_what_the_solver_file_samples(unet):
    result = distill_network(unet, unet, unet.sample_shape, nfe=2, levels=LEVELS,
                             **{**QUICK, "iterations": 5})
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(9)) * LEVELS.sigma_max
    with torch.no_grad(), result.adapters.attached():
        direct = sample_learned(unet, x, result.sigmas.float(), base="euler", disable=True)
        through = result.solver.k_sampler()(unet, x, result.solver.sigmas(2).float(), disable=True)
    torch.testing.assert_close(direct, through)
