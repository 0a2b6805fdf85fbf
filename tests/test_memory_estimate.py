"""The GPU-free memory estimate of benchmarks/comfyui_memory.py: what it counts, and that it
ranks the memory modes as a GPU measures them."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from learned_solvers.distill import checkpointed_blocks, checkpointed_model

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("comfyui_memory", ROOT / "benchmarks" / "comfyui_memory.py")
comfyui_memory = importlib.util.module_from_spec(spec)
spec.loader.exec_module(comfyui_memory)
MIB = 2 ** 20


def test_live_bytes_counts_new_storages_until_they_are_freed_and_not_views():
    before = torch.empty(MIB, dtype=torch.uint8, device="meta")  # made outside: not counted
    with comfyui_memory.LiveBytes() as tracked:
        a = torch.zeros(MIB, dtype=torch.uint8, device="meta")
        view = a.view(1024, 1024)
        a.add_(1)
        b = before + 1
        assert tracked.live == 2 * MIB
        c = b * 2
        assert tracked.live == 3 * MIB
        del a, view, c
        d = b * 3
        assert tracked.live == 2 * MIB and tracked.peak == 3 * MIB
        del b, d
        assert tracked.live == 0 and tracked.peak == 3 * MIB


class Block(torch.nn.Module):
    def __init__(self, width):
        super().__init__()
        self.inner, self.outer = torch.nn.Linear(width, 4 * width), torch.nn.Linear(4 * width, width)

    def forward(self, x):
        return self.outer(torch.nn.functional.gelu(self.inner(x)))


class Net(torch.nn.Module):
    def __init__(self, width=256, depth=6):
        super().__init__()
        self.blocks = torch.nn.ModuleList(Block(width) for _ in range(depth))
        self.requires_grad_(False)

    def forward(self, x, sigma):
        for block in self.blocks:
            x = x + block(x)
        return x * sigma


def estimated_peak(blocks: bool) -> int:
    net = Net().to("meta")
    x = torch.zeros(512, 256, device="meta", requires_grad=True)
    context = checkpointed_blocks(net) if blocks else torch.enable_grad()
    with comfyui_memory.LiveBytes() as tracked, context:
        out = checkpointed_model(net)(x, 0.5)
        out = checkpointed_model(net)(out, 0.5)
        out.pow(2).mean().backward()
    return tracked.peak


def test_the_estimate_follows_the_saved_activations_of_each_memory_mode():
    calls, blocks = estimated_peak(False), estimated_peak(True)
    hidden = 512 * 1024 * 4  # one block's widest activation, float32
    assert calls > 6 * hidden  # a whole call's activations while its backward runs
    assert blocks < 0.6 * calls


def test_attention_on_meta_is_estimated_as_the_flash_kernel():
    q = torch.zeros(1, 8, 4096, 64, device="meta", dtype=torch.bfloat16, requires_grad=True)
    matrix = 8 * 4096 * 4096 * 2  # the attention matrix the default math path keeps

    def peak():
        with comfyui_memory.LiveBytes() as tracked:
            torch.nn.functional.scaled_dot_product_attention(q, q, q).sum().backward()
        return tracked.peak

    plain = peak()
    with comfyui_memory.flash_attention_on_meta():
        flash = peak()
    assert plain > matrix and flash < matrix / 8
    assert torch.nn.functional.scaled_dot_product_attention is not None


@pytest.mark.skipif(not os.environ.get("COMFYUI_PATH"), reason="COMFYUI_PATH is not set to a ComfyUI checkout")
def test_the_estimate_on_a_real_architecture_ranks_the_modes():
    figures = {}
    for trainable in ([], ["--weights-require-grad"]):
        run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "comfyui_memory.py"), "--device", "meta",
                              "--cases", "sd15@256", *trainable], capture_output=True, text=True, timeout=600)
        rows = [line.split("|") for line in run.stdout.splitlines() if line.startswith("| sd15 ")]
        assert run.returncode == 0 and len(rows) == 2, run.stdout + run.stderr
        for row in rows:
            assert row[4].strip() == "1.6"  # SD1.5's weights in bf16, GiB
            figures[row[3].strip(), bool(trainable)] = float(row[5])
    assert figures["blocks", False] < figures["model calls", False]
    assert figures["blocks", False] < figures["blocks", True]
    assert figures["model calls", False] < figures["model calls", True]


@pytest.mark.skipif(not os.environ.get("COMFYUI_PATH"), reason="COMFYUI_PATH is not set to a ComfyUI checkout")
def test_the_sfd_estimate_grows_with_the_samples_per_pass():
    figures = {}
    for micro, modes in ((2, ["model calls", "blocks"]), (8, ["model calls"])):
        run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "comfyui_memory.py"), "--device", "meta",
                              "--cases", "sd15@256", "--fit", "sfd", "--micro-batch", str(micro), "--modes", *modes],
                             capture_output=True, text=True, timeout=600)
        rows = [line.split("|") for line in run.stdout.splitlines() if line.startswith("| sd15 ")]
        assert run.returncode == 0 and len(rows) == len(modes), run.stdout + run.stderr
        for row in rows:
            assert row[4].strip() == "1.6" and "SFD rank 8" in row[6] and f"{micro} samples" in row[6]
            figures[row[3].strip(), micro] = float(row[5])
    assert figures["blocks", 2] < figures["model calls", 2] < figures["model calls", 8]
