"""An exact denoiser: the posterior mean of a Gaussian mixture, for tests, demos and benchmarks.

Data x0 ~ sum_k pi_k N(mu_k, diag(v_k)). Under x = x0 + sigma * eps (the VE / k-diffusion
convention) the posterior mean is closed-form:

    D(x, sigma) = sum_k w_k(x, sigma) * (mu_k + v_k / (v_k + sigma^2) * (x - mu_k)),
    w_k proportional to pi_k N(x; mu_k, diag(v_k + sigma^2)),

so the probability-flow ODE has a computable ground truth; for one component it is solved in
closed form by :func:`single_gaussian_ode_solution`.
"""

from __future__ import annotations

import math

import torch


class GaussianMixtureDenoiser:
    """``D(x, sigma)`` for a diagonal Gaussian mixture; call it like a k-diffusion model.

    means, variances: [K, d]; weights: [K] (normalised here); shape: the sample shape whose
    product is d (e.g. (4, 32, 32) for an SD-sized latent). ``x`` is [B, *shape] and ``sigma``
    is [B] (or a scalar) in VE units; extra keyword arguments are ignored, so it accepts
    ComfyUI-style ``extra_args``.
    """

    sigma_convention = "ve"

    def __init__(self, means, variances, weights=None, shape=None):
        means = torch.as_tensor(means)
        variances = torch.as_tensor(variances, dtype=means.dtype, device=means.device)
        if means.ndim != 2 or variances.shape != means.shape:
            raise ValueError("means and variances must both be [K, d] with the same shape")
        if not (variances > 0).all():
            raise ValueError("variances must be positive")
        if weights is None:
            weights = torch.ones(means.shape[0], dtype=means.dtype, device=means.device)
        weights = torch.as_tensor(weights, dtype=means.dtype, device=means.device)
        if weights.shape != means.shape[:1] or not (weights > 0).all():
            raise ValueError("weights must be [K] and positive")
        self.shape = tuple(shape) if shape is not None else (means.shape[1],)
        if math.prod(self.shape) != means.shape[1]:
            raise ValueError(f"shape {self.shape} does not hold {means.shape[1]} dimensions")
        self.means = means
        self.variances = variances
        self.log_weights = torch.log(weights / weights.sum())

    @classmethod
    def power_law(cls, shape=(4, 32, 32), components: int = 8, exponent: float = 1.0,
                  mean_scale: float = 0.5, seed: int = 0, dtype=torch.float32, device="cpu"):
        """A mixture whose per-component variances follow a power law over dimensions.

        Component k has variances ``c_k * (1 + rank)^-exponent`` over a random ordering of the
        dimensions (so components differ in which dimensions carry signal), normalised so the
        average total variance per dimension is about 1, like a scaled SD latent.
        """
        gen = torch.Generator().manual_seed(seed)
        dims = math.prod(shape)
        spectrum = (1.0 + torch.arange(dims, dtype=torch.float64)) ** -exponent
        spectrum = spectrum / spectrum.mean() * (1.0 - mean_scale ** 2)
        variances = torch.stack([
            spectrum[torch.randperm(dims, generator=gen)] * (0.5 + torch.rand((), generator=gen, dtype=torch.float64))
            for _ in range(components)
        ])
        means = mean_scale * torch.randn(components, dims, generator=gen, dtype=torch.float64)
        weights = 0.5 + torch.rand(components, generator=gen, dtype=torch.float64)
        return cls(means.to(device, dtype), variances.to(device, dtype), weights.to(device, dtype), shape)

    def to(self, device=None, dtype=None):
        """A copy on another device and/or dtype."""
        moved = GaussianMixtureDenoiser.__new__(GaussianMixtureDenoiser)
        moved.shape = self.shape
        moved.means = self.means.to(device=device, dtype=dtype)
        moved.variances = self.variances.to(device=device, dtype=dtype)
        moved.log_weights = self.log_weights.to(device=device, dtype=dtype)
        return moved

    def __call__(self, x: torch.Tensor, sigma, **kwargs) -> torch.Tensor:
        batch = x.shape[0]
        flat = x.reshape(batch, 1, -1)
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1)
        noise_var = (sigma * sigma).expand(batch).reshape(batch, 1, 1)
        means = self.means.to(x.dtype)
        variances = self.variances.to(x.dtype)
        total = variances.unsqueeze(0) + noise_var  # [B, K, d]
        diff = flat - means.unsqueeze(0)
        log_p = self.log_weights.to(x.dtype) - 0.5 * (diff * diff / total + torch.log(total)).sum(-1)
        resp = torch.softmax(log_p, dim=1).unsqueeze(-1)  # [B, K, 1]
        posterior = means.unsqueeze(0) + variances.unsqueeze(0) / total * diff
        return (resp * posterior).sum(1).reshape(x.shape)

    def sample(self, count: int, generator=None) -> torch.Tensor:
        """``count`` exact data samples x0 [count, *shape]."""
        probs = torch.softmax(self.log_weights.double(), 0).cpu()
        which = torch.multinomial(probs, count, replacement=True, generator=generator)
        noise = torch.randn(count, self.means.shape[1], generator=generator, dtype=torch.float64)
        x0 = self.means.cpu().double()[which] + self.variances.cpu().double()[which].sqrt() * noise
        return x0.to(self.means.device, self.means.dtype).reshape(count, *self.shape)


def single_gaussian_ode_solution(x_start, sigma_start, sigma_end, mean, variance):
    """Exact probability-flow ODE solution for data N(mean, diag(variance)) in VE units.

    x(sigma) = mean + (x_start - mean) * sqrt((variance + sigma^2) / (variance + sigma_start^2));
    ``mean`` and ``variance`` broadcast against x_start [B, ...].
    """
    ratio = (variance + sigma_end ** 2) / (variance + sigma_start ** 2)
    return mean + (x_start - mean) * torch.sqrt(torch.as_tensor(ratio, dtype=x_start.dtype))
