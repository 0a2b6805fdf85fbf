"""Learnable time grids: monotone by construction, endpoints pinned, inside the model's range.

Positions are kept in a model-independent coordinate ``u`` in [0, 1]: the fraction of the way
from the model's sigma_max (u = 0) to its sigma_min (u = 1) measured in flow-equivalent time
``v = sigma / (alpha + sigma)`` (= t for flow models, sigma / (1 + sigma) for VE models). A grid
fitted on one model maps onto another model's range through ``u``.
"""

from __future__ import annotations

import torch

from ..learned_samplers import signal_scale


def flow_time(sigma: torch.Tensor, convention: str) -> torch.Tensor:
    """v = sigma / (alpha + sigma): the flow time with the same signal-to-noise ratio."""
    return sigma / (signal_scale(sigma, convention) + sigma)


def sigma_from_flow_time(v: torch.Tensor, convention: str) -> torch.Tensor:
    if convention == "flow":
        return v
    return v / (1 - v)


def grid_coordinate(sigmas, sigma_range, convention: str) -> torch.Tensor:
    """u [N+1] of host ``sigmas`` within ``sigma_range`` = (sigma_min, sigma_max); 0 maps past 1."""
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
    low, high = (flow_time(torch.tensor(float(s), dtype=torch.float64), convention) for s in sigma_range)
    return (high - flow_time(sigmas, convention)) / (high - low)


def sigmas_from_coordinate(u, sigma_range, convention: str) -> torch.Tensor:
    """Host sigmas for coordinates ``u`` within ``sigma_range`` (the inverse of grid_coordinate)."""
    u = torch.as_tensor(u, dtype=torch.float64)
    low, high = (flow_time(torch.tensor(float(s), dtype=torch.float64), convention) for s in sigma_range)
    return sigma_from_flow_time(high - u * (high - low), convention)


class MonotoneGrid(torch.nn.Module):
    """A strictly decreasing grid between two pinned sigmas, with a learnable interior.

    ``init`` [N+1]: the starting grid (host units); its first and last positive sigmas are
    pinned, a final 0 is kept. The interior lives in softmax logits over the gaps in ``u``
    (LD3's parameterisation): every gap stays positive, so the grid is strictly decreasing and
    inside [last positive, first] whatever the logits.
    """

    def __init__(self, init, convention: str):
        super().__init__()
        init = torch.as_tensor(init, dtype=torch.float64)
        self.convention = convention
        self.final_zero = bool(init[-1] == 0)
        positive = init[:-1] if self.final_zero else init
        if len(positive) < 2:
            raise ValueError("a learnable grid needs at least two positive sigmas")
        self.register_buffer("ends", torch.stack([positive[-1], positive[0]]))
        u = grid_coordinate(positive, self.ends, convention)
        self.logits = torch.nn.Parameter(torch.log(u[1:] - u[:-1]))

    def coordinate(self) -> torch.Tensor:
        gaps = torch.softmax(self.logits, dim=0)
        return torch.cat([gaps.new_zeros(1), torch.cumsum(gaps, 0)[:-1], gaps.new_ones(1)])

    def forward(self) -> torch.Tensor:
        sigmas = sigmas_from_coordinate(self.coordinate(), self.ends, self.convention)
        sigmas = torch.cat([self.ends[1:], sigmas[1:-1], self.ends[:1]])  # endpoints bit-exact
        if self.final_zero:
            sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])
        return sigmas
