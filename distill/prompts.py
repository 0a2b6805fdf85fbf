"""Several prompts in one fit: which prompt each start state is run with, and how that choice
travels with the states.

The model takes the prompt as a keyword, ``model(x, sigma, prompt=indices [B], **extra_args)``
(``route_prompts`` makes such a model from one denoiser per prompt). Inside ``distill`` the
indices ride in ``extra_args`` as a ``PerSample`` value, one row per start state; every place
that runs a subset of the states passes ``rows_of(extra_args, rows)`` along with them, and
the call counter hands the model a plain tensor (``plain_args``), after checking that it has
one row per state of the batch.

Training seeds go round the training prompts, validation seeds round every prompt, so the
validation seeds of the prompts held out of training (``split_prompts``) show how the fit does
on prompts it never saw.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PerSample:
    """A model keyword with one row per start state (values [M, ...]), selected with the states."""

    values: torch.Tensor

    def __len__(self) -> int:
        return len(self.values)


@dataclass(frozen=True)
class PromptSplit:
    """Which prompt indices a fit trains on and which it only validates on."""

    count: int
    training: tuple
    held_out: tuple

    def report(self) -> dict:
        """The counts a result's provenance keeps (never the prompts themselves)."""
        return {"count": self.count, "training": len(self.training), "held_out": len(self.held_out)}


def split_prompts(count: int) -> PromptSplit:
    """Train on the prompts at even positions, hold out those at odd ones (none when there is one):
    neighbours in a list are often alike, so each held-out prompt has a trained one beside it
    and the held-out half spreads over the whole list."""
    if count < 1:
        raise ValueError(f"a fit needs at least one prompt; got {count}")
    prompts = range(count)
    if count == 1:
        return PromptSplit(1, (0,), ())
    return PromptSplit(count, tuple(p for p in prompts if p % 2 == 0), tuple(p for p in prompts if p % 2 == 1))


def assign_prompts(split: PromptSplit, samples: int, validation: int) -> torch.Tensor:
    """[samples + validation] prompt indices: the training samples round the training prompts,
    the validation samples round every prompt."""
    training = torch.tensor(split.training, dtype=torch.long)
    every = torch.arange(split.count, dtype=torch.long)
    return torch.cat([training[torch.arange(samples) % len(training)], every[torch.arange(validation) % len(every)]])


def rows_of(extra_args: dict | None, rows) -> dict | None:
    """``extra_args`` for the states ``rows`` (a slice or index tensor) of the states its
    ``PerSample`` values are aligned with; other values (and None) pass unchanged."""
    if not extra_args or not any(isinstance(v, PerSample) for v in extra_args.values()):
        return extra_args
    if torch.is_tensor(rows):
        rows = rows.cpu()
    return {k: PerSample(v.values[rows]) if isinstance(v, PerSample) else v for k, v in extra_args.items()}


def plain_args(kwargs: dict, batch: int, device=None) -> dict:
    """The keywords a model is called with: each ``PerSample`` value as its tensor, which must
    hold one row per sample of the batch."""
    plain = {}
    for name, value in kwargs.items():
        if isinstance(value, PerSample):
            if len(value) != batch:
                raise RuntimeError(f"the per-sample keyword {name!r} has {len(value)} rows for a batch of {batch}: "
                                   f"a subset of states was run without rows_of()")
            value = value.values if device is None else value.values.to(device)
        plain[name] = value
    return plain


def plain_model(model):
    """``model`` called with ``plain_args``: per-sample keywords as plain tensors (a run outside
    ``distill``'s call counter, e.g. a teacher run on its own)."""
    def call(x, sigma, **kwargs):
        return model(x, sigma, **plain_args(kwargs, int(x.shape[0]), x.device))

    return call


def route_prompts(denoisers) -> "PromptRouter":
    """One denoiser ``model(x, sigma, prompt=indices)`` from one denoiser per prompt."""
    return PromptRouter(list(denoisers))


class PromptRouter:
    """Runs each sample of a batch through its prompt's denoiser (``denoisers[prompt[i]]``),
    one call per prompt present; without ``prompt`` every sample goes to the first."""

    def __init__(self, denoisers: list):
        if not denoisers:
            raise ValueError("route_prompts needs at least one denoiser")
        self.denoisers = denoisers
        self.sigma_convention = getattr(denoisers[0], "sigma_convention", None)

    def __call__(self, x: torch.Tensor, sigma, prompt=None, **kwargs) -> torch.Tensor:
        if prompt is None:
            return self.denoisers[0](x, sigma, **kwargs)
        prompt = torch.as_tensor(prompt).reshape(-1).to(x.device)
        sigma = torch.as_tensor(sigma, device=x.device).reshape(-1).expand(x.shape[0])
        out = None
        for index in prompt.unique().tolist():
            if not 0 <= index < len(self.denoisers):
                raise ValueError(f"prompt {index} is not one of the {len(self.denoisers)} prompts")
            rows = (prompt == index).nonzero().flatten()
            part = self.denoisers[index](x[rows], sigma[rows], **kwargs)
            if out is None:
                out = part.new_empty((x.shape[0],) + tuple(part.shape[1:]))
            out = out.index_copy(0, rows, part)  # not in place: autograd sees every part
        return out


def prompt_lines(prompts) -> list:
    """The prompts of a prompt list as a user writes it: text with one per line, or a list of
    strings; each stripped, the empty ones left out."""
    lines = prompts.splitlines() if isinstance(prompts, str) else list(prompts or ())
    return [line.strip() for line in lines if line.strip()]


__all__ = ["PerSample", "PromptRouter", "PromptSplit", "assign_prompts", "plain_args", "plain_model", "prompt_lines",
           "route_prompts", "rows_of", "split_prompts"]
