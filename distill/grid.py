"""Learnable time grids: monotone by construction, endpoints pinned, inside the model's range.

Positions are kept in the grid coordinate ``u`` of ``schedules.grids`` (the fraction of the way
from the grid's first to its last positive sigma in flow-equivalent time).
"""

from __future__ import annotations

import torch

from ..learned_samplers import append_zero, half_log_snr, sigma_from_half_log_snr
from ..schedules.grids import grid_coordinate, sigmas_from_coordinate


class MonotoneGrid(torch.nn.Module):
    """A strictly decreasing grid from a pinned sigma_max, with a learnable interior.

    ``init`` [N+1]: the starting grid (host units); its first sigma is pinned and a final 0 is
    kept. The interior lives in softmax logits over the gaps in ``u`` (LD3's parameterisation):
    every gap stays positive, so the grid is strictly decreasing whatever the logits.

    The last positive sigma is pinned too, unless ``sigma_floor`` is given and the grid ends in a
    final denoise to 0: then it is learnable (``end_lambda``, its half-log-SNR) between
    ``sigma_floor`` (the model's sigma_min) and the first sigma, because at few steps the
    best last evaluation is rarely the model's sigma_min, where the call barely changes x.
    ``project()`` puts ``end_lambda`` back inside its bounds after an optimiser step.
    """

    def __init__(self, init, convention: str, sigma_floor: float | None = None):
        super().__init__()
        init = torch.as_tensor(init, dtype=torch.float64)
        self.convention = convention
        self.final_zero = bool(init[-1] == 0)
        positive = init[:-1] if self.final_zero else init
        if len(positive) < 2:
            raise ValueError("a learnable grid needs at least two positive sigmas")
        self.register_buffer("first", positive[0].clone())
        self.register_buffer("last", positive[-1].clone())
        self.free_end = self.final_zero and sigma_floor is not None
        if self.free_end:
            floor = min(float(sigma_floor), float(positive[-1]))
            top = half_log_snr(positive[0], convention)
            bottom = half_log_snr(torch.tensor(floor, dtype=torch.float64), convention)
            # the end may rise to 2/3 of the way to sigma_max (in lambda), never onto it
            self.register_buffer("end_bounds", torch.stack([top + (bottom - top) / 3, bottom]))
            self.end_lambda = torch.nn.Parameter(half_log_snr(positive[-1], convention).clone())
        u = grid_coordinate(positive, torch.stack([positive[-1], positive[0]]), convention)
        self.logits = torch.nn.Parameter(torch.log(u[1:] - u[:-1]))

    def coordinate(self) -> torch.Tensor:
        """u [len(positive)] of the positive sigmas between the grid's own two ends."""
        gaps = torch.softmax(self.logits, dim=0)
        return torch.cat([gaps.new_zeros(1), torch.cumsum(gaps, 0)[:-1], gaps.new_ones(1)])

    def end(self) -> torch.Tensor:
        """The last positive sigma (a 0-d tensor, differentiable when it is learnable)."""
        if not self.free_end:
            return self.last
        lam = torch.minimum(torch.maximum(self.end_lambda, self.end_bounds[0]), self.end_bounds[1])
        return sigma_from_half_log_snr(lam, self.convention)

    @torch.no_grad()
    def project(self):
        if self.free_end:
            self.end_lambda.clamp_(float(self.end_bounds[0]), float(self.end_bounds[1]))

    def forward(self) -> torch.Tensor:
        end = self.end()
        sigmas = sigmas_from_coordinate(self.coordinate(), torch.stack([end, self.first]), self.convention)
        sigmas = torch.cat([self.first[None], sigmas[1:-1], end[None]])  # endpoints bit-exact
        if self.final_zero:
            sigmas = append_zero(sigmas)
        return sigmas
