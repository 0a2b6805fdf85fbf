"""The guided models the benchmarks fit: classifier-free guidance computed as ComfyUI computes
it, over the exact mixture with prompts and over the shipped class-conditional test UNet."""

import pytest
import torch

from learned_solvers.learned_samplers import GaussianMixtureDenoiser
from learned_solvers.testmodel import CLASSES, GuidedUNet, labelled_images, load_test_unet


def test_guidance_on_the_mixture_is_uncond_plus_cfg_times_the_difference():
    mixture = GaussianMixtureDenoiser.close_modes(shape=(2, 8, 8), prompts=True)
    x = 3.0 * torch.randn(5, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    sigma = torch.full((5,), 3.0)
    cond, uncond = mixture.denoise_pair(x, sigma, prompt=2)
    assert torch.allclose(uncond, mixture(x, sigma))
    assert torch.allclose(mixture.guided(2, 1.0)(x, sigma), cond)
    assert torch.allclose(mixture.guided(2, 7.0)(x, sigma), uncond + 7.0 * (cond - uncond), atol=1e-5)
    # the prompt's own components: under heavy noise the cond result is near its pair's means
    noise = 50.0 * torch.randn(5, 2, 8, 8, generator=torch.Generator().manual_seed(1))
    near = mixture.guided(2, 1.0)(noise, torch.full((5,), 50.0))
    owned = mixture._to_basis(near.reshape(5, 2, 8, 8)).reshape(5, -1)
    distances = torch.cdist(owned.double(), mixture.means.double())
    assert set(distances.argmin(1).tolist()) <= {4, 5}
    with pytest.raises(ValueError, match="guidance needs a mixture with prompts"):
        GaussianMixtureDenoiser.close_modes(shape=(2, 8, 8)).guided(0, 7.0)
    with pytest.raises(ValueError, match="not one of this mixture's 8 prompts"):
        mixture.guided(8, 7.0)


def test_the_conditional_unet_follows_its_class_and_guidance_applies():
    unet = load_test_unet(conditional=True)
    images, labels = labelled_images(64, generator=torch.Generator().manual_seed(1))
    sigma = torch.full((64,), 0.5)
    noisy = images + 0.5 * torch.randn(images.shape, generator=torch.Generator().manual_seed(2))
    # told the right class it denoises better than told another one
    right = (unet(noisy, sigma, label=labels) - images).pow(2).mean()
    wrong = (unet(noisy, sigma, label=(labels + 1) % len(CLASSES)) - images).pow(2).mean()
    assert right < 0.9 * wrong
    guided = GuidedUNet(unet, 1, 1.0)
    assert torch.allclose(guided(noisy[:4], sigma[:4]), unet(noisy[:4], sigma[:4], label=1))
    cond, uncond = unet(noisy[:4], sigma[:4], label=1), unet(noisy[:4], sigma[:4])
    assert torch.allclose(GuidedUNet(unet, 1, 7.0)(noisy[:4], sigma[:4]), uncond + 7.0 * (cond - uncond), atol=1e-4)
    with pytest.raises(ValueError, match="one of the model's classes"):
        GuidedUNet(unet, len(CLASSES), 7.0)
