"""Bounding the fit's memory: recompute model calls, or every block inside them, in backward.

A gradient step backpropagates through every model call of the unrolled student. Stored, the
activations of N calls of a large network do not fit a consumer GPU; recomputed, a step holds
one call's (``checkpointed_model``) or one block's (``checkpointed_blocks``) at a time, for
about one more forward each. And the network's own weights stay out of autograd
(``frozen_weights``): no gradient the size of the model, no inputs of every layer kept for one.
"""

from __future__ import annotations

import contextlib

import torch
from torch.utils.checkpoint import checkpoint


MEMORY_MODES = ("auto", "model calls", "blocks")
# SDXL (4.8 GiB in bf16) and larger get block checkpointing under "auto"; SD1.5 (1.6 GiB) does not
LARGE_MODEL_BYTES = 3 * 1024 ** 3


def memory_plan(memory: str, model_bytes: int) -> dict:
    """How a host's fit bounds memory for a network of ``model_bytes``: the mode ("model calls"
    or "blocks"), the samples per run without gradients, D-ODE's sample cap and the samples per
    gradient pass.

    "model calls": each model call of the unrolled student is recomputed in backward, so a
    gradient step holds one call's activations. "blocks": each block inside that call is
    recomputed too (``checkpointed_blocks``), so a step holds one block's activations (about one
    more forward per call), and runs without gradients take 2 samples at a time. Either way a
    gradient pass takes ``micro_batch`` (2) samples, the gradient accumulated over the batch (the
    hosts pass it to the solver fit and the SFD fit unless the caller sets it): an SFD step with
    all 8 samples in one pass would hold 17.6 GB on SD1.5 at 512² in "model calls" and 20 GB on
    SDXL at 1024² in "blocks", with 2 per pass 6.8 and 9.3 GB (``benchmarks/comfyui_memory.py
    --device meta --fit sfd``). "auto":
    "blocks" for networks of ``LARGE_MODEL_BYTES`` or more (SDXL, SD3, Flux, Wan), "model calls"
    below (SD1.x).
    """
    if memory not in MEMORY_MODES:
        raise ValueError(f"unknown memory mode {memory!r}; choose one of {', '.join(MEMORY_MODES)}")
    if memory == "auto":
        memory = "blocks" if model_bytes >= LARGE_MODEL_BYTES else "model calls"
    if memory == "blocks":
        return {"memory": "blocks", "inference_batch_size": 2, "dode_samples": 4, "micro_batch": 2}
    return {"memory": "model calls", "inference_batch_size": 8, "dode_samples": None, "micro_batch": 2}


def checkpointed_model(model):
    """``model`` with each call recomputed in backward instead of storing its activations."""

    def call(x, sigma, **kwargs):
        return checkpoint(model, x, sigma, use_reentrant=False, **kwargs)

    return call


def network_blocks(module: torch.nn.Module) -> list:
    """The outermost submodules of ``module`` that are not plain containers (ModuleList,
    Sequential, ModuleDict): a UNet's res/attention blocks, a DiT's transformer blocks."""
    containers = (torch.nn.ModuleList, torch.nn.Sequential, torch.nn.ModuleDict)
    blocks = []
    for child in module.children():
        if isinstance(child, containers):
            blocks += network_blocks(child)
        else:
            blocks.append(child)
    return blocks


@contextlib.contextmanager
def checkpointed_blocks(module: torch.nn.Module):
    """Within the context, every block of ``module`` (``network_blocks``) keeps only its inputs
    when gradients are recorded and recomputes its activations in backward.

    Inside a checkpointed model call this bounds a backward pass to one block's activations
    instead of one whole network call's, for about one more forward per call. Calls without
    gradients run unchanged. The blocks' own ``forward`` is restored on exit, also after an error.

    A block may update its inputs in place (Flux's double blocks do ``txt += ...``). The
    checkpoint keeps references to its inputs for the recomputation, so each run gets its own
    copy of every tensor input: the recomputation then sees the values of the original forward
    (one transient copy of the block's inputs per run). The caller then no longer sees such an
    in-place update, only the block's return value, which is what ComfyUI's networks pass on.
    """
    patched = []
    for block in network_blocks(module):
        own = block.__dict__.get("forward")  # an instance-level forward set by someone else stays theirs
        forward = block.forward

        def on_copies(*args, _forward=forward, **kwargs):
            return _forward(*(_copied(a) for a in args), **{k: _copied(v) for k, v in kwargs.items()})

        def recomputed(*args, _forward=forward, _on_copies=on_copies, **kwargs):
            if not torch.is_grad_enabled():
                return _forward(*args, **kwargs)
            return checkpoint(_on_copies, *args, use_reentrant=False, **kwargs)

        block.forward = recomputed
        patched.append((block, own))
    try:
        yield len(patched)
    finally:
        for block, own in patched:
            if own is None:
                del block.forward
            else:
                block.forward = own


@contextlib.contextmanager
def frozen_weights(network: torch.nn.Module):
    """Within: no parameter of ``network`` requires gradients and none is an inference-mode
    tensor (those are swapped for ordinary copies); afterwards every flag and tensor is the
    one that was there."""
    flags, swapped = [], []
    for module in network.modules():
        for store in (module._parameters, module._buffers):
            for name, tensor in list(store.items()):
                if tensor is None:
                    continue
                if tensor.is_inference():  # its ordinary copy stands in; the original keeps its flag
                    swapped.append((store, name, tensor))
                    copy_ = tensor.clone()
                    store[name] = torch.nn.Parameter(copy_, requires_grad=False) if isinstance(
                        tensor, torch.nn.Parameter) else copy_
                elif isinstance(tensor, torch.nn.Parameter) and tensor.requires_grad:
                    flags.append(tensor)
                    tensor.requires_grad_(False)
    try:
        yield
    finally:
        for store, name, tensor in swapped:
            store[name] = tensor
        for tensor in flags:
            tensor.requires_grad_(True)


def _copied(value):
    return value.clone() if torch.is_tensor(value) else value


__all__ = ["LARGE_MODEL_BYTES", "MEMORY_MODES", "checkpointed_blocks", "checkpointed_model", "frozen_weights",
           "memory_plan", "network_blocks"]
