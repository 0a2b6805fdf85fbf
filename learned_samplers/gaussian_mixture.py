"""An exact denoiser: the posterior mean of a Gaussian mixture, for tests, demos and benchmarks.

Data x0 ~ sum_k pi_k N(mu_k, diag(v_k)). Under x = x0 + sigma * eps (the VE / k-diffusion
convention) the posterior mean is closed-form:

    D(x, sigma) = sum_k w_k(x, sigma) * (mu_k + v_k / (v_k + sigma^2) * (x - mu_k)),
    w_k proportional to pi_k N(x; mu_k, diag(v_k + sigma^2)),

so the probability-flow ODE has a computable ground truth; for one component it is solved in
closed form by :func:`single_gaussian_ode_solution`.

A class-conditional mixture (``owners``: which prompt owns each component) also gives the
posterior mean given a prompt (the mixture of that prompt's components), and so classifier-free
guidance as ComfyUI computes it, ``uncond + cfg * (cond - uncond)`` on the denoised values:
``GuidedDenoiser`` is that guided model for one prompt and scale.

The mixture may live in the orthonormal 2-D DCT basis of the last two axes (``basis="dct"``):
white noise stays white there, so the posterior is still diagonal, and a power-law variance over
spatial frequency gives samples with an image-like 1/f spectrum and uniform per-pixel variance.
"""

from __future__ import annotations

import math

import torch


class GaussianMixtureDenoiser:
    """``D(x, sigma)`` for a diagonal Gaussian mixture; call it like a k-diffusion model.

    means, variances: [K, d]; weights: [K] (normalised here); shape: the sample shape whose
    product is d (e.g. (4, 32, 32) for an SD-sized latent). ``x`` is [B, *shape] and ``sigma``
    is [B] (or a scalar) in VE units; extra keyword arguments are ignored, so it accepts
    ComfyUI-style ``extra_args``. owners: [K] the prompt (0, 1, ...) each component belongs to,
    for ``denoise_pair`` and ``guided`` (None: an unconditional mixture).
    """

    sigma_convention = "ve"

    def __init__(self, means, variances, weights=None, shape=None, basis=None, owners=None):
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
        if basis not in (None, "dct"):
            raise ValueError("basis must be None (pixels) or 'dct'")
        if basis == "dct" and len(self.shape) < 2:
            raise ValueError("the DCT basis needs a shape with at least two spatial axes")
        self.basis = basis
        self.means = means
        self.variances = variances
        self.log_weights = torch.log(weights / weights.sum())
        if owners is not None:
            owners = torch.as_tensor(owners, dtype=torch.long).cpu()
            if owners.shape != means.shape[:1] or int(owners.min()) < 0:
                raise ValueError("owners must be [K] prompt indices (0, 1, ...), one per component")
        self.owners = owners

    @property
    def prompts(self) -> int:
        """How many prompts own components (0 for an unconditional mixture)."""
        return 0 if self.owners is None else int(self.owners.max()) + 1

    def _to_basis(self, x, inverse=False):
        """Pixels -> DCT coefficients over the last two axes (or back); identity without a basis."""
        if self.basis is None:
            return x
        rows, cols = _dct_matrix(x.shape[-2], x), _dct_matrix(x.shape[-1], x)
        if inverse:
            return rows.T @ x @ cols
        return rows @ x @ cols.T

    @classmethod
    def power_law(cls, shape=(4, 32, 32), components: int = 8, exponent: float = 2.0,
                  class_share: float = 0.5, seed: int = 0, dtype=torch.float32, device="cpu"):
        """An image-like mixture in the DCT basis: a power-law spectrum over spatial frequency.

        The total variance at spatial frequency f (cycles per image, radial) is proportional to
        ``(1 + f)^-exponent``, normalised to an average of 1 per value like a scaled SD latent.
        A share of it, ``class_share * (1 + f)^-2``, separates the components (their means
        differ in coarse structure, as classes of images do); the rest is within-component
        variance, scaled per component by a factor in [0.75, 1.25].
        """
        if len(shape) < 2:
            raise ValueError("power_law needs a shape with two spatial axes, e.g. (4, 32, 32)")
        gen = torch.Generator().manual_seed(seed)
        fy = torch.arange(shape[-2], dtype=torch.float64)[:, None]
        fx = torch.arange(shape[-1], dtype=torch.float64)[None, :]
        radius = ((fy * fy + fx * fx).sqrt() / 2).expand(*shape)  # DCT index k is k/2 cycles
        spectrum = (1.0 + radius) ** -exponent
        spectrum = (spectrum / spectrum.mean()).reshape(-1)
        between = class_share * (1.0 + radius.reshape(-1)) ** -2
        dims = spectrum.numel()
        means = (spectrum * between).sqrt() * torch.randn(components, dims, generator=gen, dtype=torch.float64)
        scale = 0.75 + 0.5 * torch.rand(components, 1, generator=gen, dtype=torch.float64)
        variances = spectrum * (1.0 - between) * scale
        weights = 0.5 + torch.rand(components, generator=gen, dtype=torch.float64)
        return cls(means.to(device, dtype), variances.to(device, dtype), weights.to(device, dtype), shape,
                   basis="dct")

    @classmethod
    def close_modes(cls, shape=(4, 32, 32), pairs: int = 8, separation: float = 0.2, widths=(0.01, 2.0),
                    exponent: float = 2.0, class_share: float = 0.5, seed: int = 0, dtype=torch.float32,
                    device="cpu", prompts: bool = False):
        """A hard image-like mixture: ``pairs`` pairs of components, each pair close together.

        Like ``power_law`` (DCT basis, 1/f spectrum, components differing in coarse structure),
        but every second component sits near the one before it: its mean is the first mean plus
        ``separation`` times a fresh draw of the between-component spread, so the two share a
        boundary that few-step solvers, and a coarse teacher, cross on some seeds. Each
        component's within-variance is scaled by a factor drawn log-uniformly from ``widths``,
        so neighbouring components also differ in width (and trajectories near them in
        stiffness). prompts: each pair is one prompt's (``owners``), so guidance toward a
        prompt leaves its own close boundary to cross.
        """
        if len(shape) < 2:
            raise ValueError("close_modes needs a shape with two spatial axes, e.g. (4, 32, 32)")
        gen = torch.Generator().manual_seed(seed)
        fy = torch.arange(shape[-2], dtype=torch.float64)[:, None]
        fx = torch.arange(shape[-1], dtype=torch.float64)[None, :]
        radius = ((fy * fy + fx * fx).sqrt() / 2).expand(*shape).reshape(-1)
        spectrum = (1.0 + radius) ** -exponent
        spectrum = spectrum / spectrum.mean()
        between = class_share * (1.0 + radius) ** -2
        spread = (spectrum * between).sqrt()
        dims = spectrum.numel()
        centres = spread * torch.randn(pairs, dims, generator=gen, dtype=torch.float64)
        partners = centres + separation * spread * torch.randn(pairs, dims, generator=gen, dtype=torch.float64)
        means = torch.stack([centres, partners], 1).reshape(2 * pairs, dims)
        low, high = math.log(widths[0]), math.log(widths[1])
        scale = torch.exp(low + (high - low) * torch.rand(2 * pairs, 1, generator=gen, dtype=torch.float64))
        variances = spectrum * (1.0 - between) * scale
        weights = 0.5 + torch.rand(2 * pairs, generator=gen, dtype=torch.float64)
        owners = torch.arange(pairs).repeat_interleave(2) if prompts else None
        return cls(means.to(device, dtype), variances.to(device, dtype), weights.to(device, dtype), shape,
                   basis="dct", owners=owners)

    def to(self, device=None, dtype=None):
        """A copy on another device and/or dtype."""
        moved = GaussianMixtureDenoiser.__new__(GaussianMixtureDenoiser)
        moved.shape = self.shape
        moved.basis = self.basis
        moved.means = self.means.to(device=device, dtype=dtype)
        moved.variances = self.variances.to(device=device, dtype=dtype)
        moved.log_weights = self.log_weights.to(device=device, dtype=dtype)
        moved.owners = self.owners
        return moved

    def __call__(self, x: torch.Tensor, sigma, **kwargs) -> torch.Tensor:
        return self.denoise_pair(x, sigma)[1]

    def denoise_pair(self, x: torch.Tensor, sigma, prompt=None) -> tuple:
        """(cond, uncond): the posterior means [B, *shape] given ``prompt`` (an int or [B]
        indices; None: cond is None) and without one, from one evaluation of every component."""
        batch = x.shape[0]
        flat = self._to_basis(x.reshape(batch, *self.shape)).reshape(batch, 1, -1)
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1)
        noise_var = (sigma * sigma).expand(batch).reshape(batch, 1, 1)
        means = self.means.to(x.dtype)
        variances = self.variances.to(x.dtype)
        total = variances.unsqueeze(0) + noise_var  # [B, K, d]
        diff = flat - means.unsqueeze(0)
        log_p = self.log_weights.to(x.dtype) - 0.5 * (diff * diff / total + torch.log(total)).sum(-1)
        posterior = means.unsqueeze(0) + variances.unsqueeze(0) / total * diff

        def mean_under(log_weights):
            resp = torch.softmax(log_weights, dim=1).unsqueeze(-1)  # [B, K, 1]
            denoised = (resp * posterior).sum(1).reshape(batch, *self.shape)
            return self._to_basis(denoised, inverse=True).reshape(x.shape)

        uncond = mean_under(log_p)
        if prompt is None:
            return None, uncond
        if self.owners is None:
            raise ValueError("this mixture has no prompts; build it with owners (e.g. close_modes(prompts=True))")
        prompt = torch.as_tensor(prompt, dtype=torch.long).reshape(-1).expand(batch).cpu()
        if int(prompt.max()) >= self.prompts or int(prompt.min()) < 0:
            raise ValueError(f"prompt {prompt.tolist()} is not one of this mixture's {self.prompts} prompts")
        owned = (self.owners[None, :] == prompt[:, None]).to(x.device)  # [B, K]
        return mean_under(log_p.masked_fill(~owned, -math.inf)), uncond

    def guided(self, prompt, cfg: float = 1.0) -> GuidedDenoiser:
        """The model ComfyUI's CFG makes of this one for ``prompt`` at scale ``cfg``."""
        return GuidedDenoiser(self, prompt, float(cfg))

    def sample(self, count: int, generator=None) -> torch.Tensor:
        """``count`` exact data samples x0 [count, *shape]."""
        probs = torch.softmax(self.log_weights.double(), 0).cpu()
        which = torch.multinomial(probs, count, replacement=True, generator=generator)
        noise = torch.randn(count, self.means.shape[1], generator=generator, dtype=torch.float64)
        x0 = self.means.cpu().double()[which] + self.variances.cpu().double()[which].sqrt() * noise
        x0 = self._to_basis(x0.reshape(count, *self.shape), inverse=True)
        return x0.to(self.means.device, self.means.dtype)


class GuidedDenoiser:
    """Classifier-free guidance over a class-conditional ``GaussianMixtureDenoiser``, computed as
    ComfyUI's ``cfg_function`` does: ``uncond + cfg * (cond - uncond)`` on the denoised values
    (at cfg 1 the cond alone, as ComfyUI skips the uncond there). A k-diffusion denoiser
    ``model(x [B, *shape], sigma [B] in VE units, prompt=None)``: ``prompt`` ([B] indices) runs
    each sample with its own prompt instead of the one given here (``distill``'s ``prompts``);
    other keyword arguments are ignored. One
    call is one sample-call however many of the mixture's components it weighs (a CFG pair counts
    as one, as in ``distill.cost``).
    """

    sigma_convention = "ve"

    def __init__(self, mixture: GaussianMixtureDenoiser, prompt, cfg: float):
        if mixture.owners is None:
            raise ValueError("guidance needs a mixture with prompts (owners); e.g. close_modes(prompts=True)")
        if not 0 <= int(prompt) < mixture.prompts:
            raise ValueError(f"prompt {prompt} is not one of this mixture's {mixture.prompts} prompts")
        self.mixture, self.prompt, self.cfg = mixture, int(prompt), float(cfg)
        self.shape = mixture.shape

    def to(self, device=None, dtype=None) -> GuidedDenoiser:
        """A copy whose mixture is on another device and/or dtype."""
        return GuidedDenoiser(self.mixture.to(device, dtype), self.prompt, self.cfg)

    def __call__(self, x: torch.Tensor, sigma, prompt=None, **kwargs) -> torch.Tensor:
        cond, uncond = self.mixture.denoise_pair(x, sigma, self.prompt if prompt is None else prompt)
        return cond if self.cfg == 1.0 else uncond + self.cfg * (cond - uncond)


def _dct_matrix(size: int, like: torch.Tensor) -> torch.Tensor:
    """The orthonormal DCT-II matrix [size, size] in ``like``'s dtype and device."""
    n = torch.arange(size, dtype=torch.float64)
    matrix = torch.cos(math.pi * (n[None, :] + 0.5) * n[:, None] / size) * math.sqrt(2.0 / size)
    matrix[0] /= math.sqrt(2.0)
    return matrix.to(device=like.device, dtype=like.dtype)


def single_gaussian_ode_solution(x_start, sigma_start, sigma_end, mean, variance):
    """Exact probability-flow ODE solution for data N(mean, diag(variance)) in VE units.

    x(sigma) = mean + (x_start - mean) * sqrt((variance + sigma^2) / (variance + sigma_start^2));
    ``mean`` and ``variance`` broadcast against x_start [B, ...].
    """
    ratio = (variance + sigma_end ** 2) / (variance + sigma_start ** 2)
    return mean + (x_start - mean) * torch.sqrt(torch.as_tensor(ratio, dtype=x_start.dtype))
