"""LoRA adapters on a denoiser's layers (what SFD trains instead of the weights) and their file
in ComfyUI's LoRA key format.

An adapter adds ``(alpha / rank) * up(down(x))`` to a layer's output: for a Linear, down
[rank, in] and up [out, rank]; for a Conv2d, down a convolution [rank, in, kh, kw] with the
layer's own stride, padding and dilation, then up a 1x1 convolution [out, rank, 1, 1]. Both are
the same as adding ``(alpha / rank) * up.flatten(1) @ down.flatten(1)`` (reshaped) to the
layer's weight, which is what ComfyUI does when it loads the file
(``comfy.weight_adapter.lora``), so the file gives the samples the fit measured.

While the fit runs, the adapters work through forward hooks on the network's own modules
(``LoraAdapters.attached``): the base weights are read, never written, and never get a
gradient. The hooks are gone when the context ends, also after an error or a cancel.

File: safetensors with ``<prefix><module>.lora_down.weight``, ``.lora_up.weight`` and ``.alpha``
per adapted layer, the generic key form ComfyUI maps onto its model's state dict
(``comfy.lora.model_lora_keys_unet``: ``diffusion_model.<module>``), so the core
``LoraLoaderModelOnly`` loads it for any model family.
"""

from __future__ import annotations

import contextlib
import json
import math
import os

import torch
from torch.nn import functional

# where ComfyUI's BaseModel keeps the network: its state-dict keys start with this
COMFYUI_PREFIX = "diffusion_model."
MAX_RANK = 256
LORA_FORMAT = "learned-solvers-sfd-lora"


def lora_targets(network: torch.nn.Module) -> dict:
    """The layers an adapter can sit on: name -> module for every Linear and every Conv2d
    without groups (1x1 and larger kernels), in the network's own order."""
    targets = {}
    for name, module in network.named_modules():
        if isinstance(module, torch.nn.Linear) or (isinstance(module, torch.nn.Conv2d) and module.groups == 1):
            targets[name] = module
    return targets


class LoraAdapters(torch.nn.Module):
    """Low-rank adapters [rank] on every ``lora_targets`` layer of ``network``.

    down starts as a small random projection (kaiming-uniform, as LoRA does), up at zero, so
    with fresh adapters the network computes exactly what it did. alpha = rank: the update is
    up @ down itself. The adapters' parameters live in float32 on ``device``.
    """

    def __init__(self, network: torch.nn.Module, rank: int = 8, *, seed: int = 0, device=None):
        super().__init__()
        if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= MAX_RANK:
            raise ValueError(f"rank must be a whole number from 1 to {MAX_RANK}; got {rank!r}")
        targets = lora_targets(network)
        if not targets:
            raise ValueError("this network has no Linear or Conv2d layer a LoRA could adapt")
        self.rank = rank
        self._paused = False
        self.alpha = float(rank)
        self.names = list(targets)
        self._modules_by_name = targets  # plain dict: the network is not a submodule of the adapters
        gen = torch.Generator().manual_seed(seed)
        self.down = torch.nn.ParameterList()
        self.up = torch.nn.ParameterList()
        for name, module in targets.items():
            rank_here = min(rank, *module.weight.shape[:2]) if isinstance(module, torch.nn.Linear) else rank
            if isinstance(module, torch.nn.Linear):
                down_shape, up_shape = (rank_here, module.in_features), (module.out_features, rank_here)
            else:
                down_shape = (rank_here, module.in_channels) + tuple(module.kernel_size)
                up_shape = (module.out_channels, rank_here, 1, 1)
            fan_in = math.prod(down_shape[1:])
            bound = 1 / math.sqrt(fan_in)  # kaiming-uniform with a = sqrt(5), as torch's layers start
            down = (torch.rand(down_shape, generator=gen, dtype=torch.float32) * 2 - 1) * bound
            self.down.append(torch.nn.Parameter(down))
            self.up.append(torch.nn.Parameter(torch.zeros(up_shape, dtype=torch.float32)))
        if device is not None:
            self.to(device)

    @property
    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def scale(self, index: int) -> float:
        return self.alpha / self.down[index].shape[0]

    def delta(self, index: int, module, x: torch.Tensor) -> torch.Tensor:
        """The adapter's addition to ``module``'s output for input ``x``."""
        down = self.down[index].to(x.dtype)
        up = self.up[index].to(x.dtype)
        if isinstance(module, torch.nn.Linear):
            return functional.linear(functional.linear(x, down), up) * self.scale(index)
        inner = functional.conv2d(x, down, None, module.stride, module.padding, module.dilation)
        return functional.conv2d(inner, up) * self.scale(index)

    @contextlib.contextmanager
    def attached(self):
        """Within: the network's layers compute with their adapters added (forward hooks)."""
        handles = []
        try:
            for index, name in enumerate(self.names):
                module = self._modules_by_name[name]

                def hook(layer, inputs, output, _index=index):
                    if self._paused:
                        return output
                    return output + self.delta(_index, layer, inputs[0]).to(output.dtype)

                handles.append(module.register_forward_hook(hook))
            yield self
        finally:
            for handle in handles:
                handle.remove()

    @contextlib.contextmanager
    def paused(self):
        """Within (inside ``attached``): the network computes without its adapters (the teacher)."""
        before, self._paused = self._paused, True
        try:
            yield self
        finally:
            self._paused = before

    def file_tensors(self, prefix: str = COMFYUI_PREFIX) -> dict:
        """The adapters under ComfyUI's LoRA keys: {<prefix><name>.lora_down.weight, ...}."""
        tensors = {}
        for index, name in enumerate(self.names):
            key = f"{prefix}{name}"
            tensors[f"{key}.lora_down.weight"] = self.down[index].detach().float().cpu().contiguous()
            tensors[f"{key}.lora_up.weight"] = self.up[index].detach().float().cpu().contiguous()
            tensors[f"{key}.alpha"] = torch.tensor(float(self.down[index].shape[0]) * self.scale(index))
        return tensors

    def load_file_tensors(self, tensors: dict, prefix: str = COMFYUI_PREFIX):
        """Take the adapters' values from ``file_tensors``-style keys (shapes must match)."""
        with torch.no_grad():
            for index, name in enumerate(self.names):
                key = f"{prefix}{name}"
                for part, store in (("lora_down", self.down), ("lora_up", self.up)):
                    value = tensors.get(f"{key}.{part}.weight")
                    if value is None or tuple(value.shape) != tuple(store[index].shape):
                        raise ValueError(f"the LoRA has no {part} of shape {tuple(store[index].shape)} for {name}")
                    store[index].copy_(value.to(store[index]))

    def snapshot(self) -> list:
        return [p.detach().clone() for p in self.parameters()]

    def restore(self, values: list):
        with torch.no_grad():
            for p, v in zip(self.parameters(), values):
                p.copy_(v)


def save_lora(adapters: LoraAdapters, path, metadata: dict | None = None, prefix: str = COMFYUI_PREFIX) -> str:
    """Write ``adapters`` as a safetensors LoRA (ComfyUI's keys) atomically; ``metadata``
    values that are not strings are stored as JSON. Checks the folder can be written first."""
    from safetensors.torch import save

    from ..schedules.files import write_atomically

    path = os.fspath(path)
    if not path.endswith(".safetensors"):
        path += ".safetensors"
    text = {"format": LORA_FORMAT, "rank": str(adapters.rank), "layers": str(len(adapters.names))}
    for key, value in (metadata or {}).items():
        text[key] = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=float)
    return write_atomically(path, save(adapters.file_tensors(prefix), metadata=text))


__all__ = ["COMFYUI_PREFIX", "LORA_FORMAT", "LoraAdapters", "lora_targets", "save_lora"]
