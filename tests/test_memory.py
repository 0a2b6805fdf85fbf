"""Block checkpointing: same gradients, fewer saved activations, forwards restored."""

import pytest
import torch

from learned_solvers.distill import checkpointed_blocks, checkpointed_model, network_blocks


class Block(torch.nn.Module):
    def __init__(self, width):
        super().__init__()
        self.inner = torch.nn.Linear(width, 4 * width)
        self.outer = torch.nn.Linear(4 * width, width)
        self.calls = 0

    def forward(self, x, scale=1.0):
        self.calls += 1
        return x + scale * self.outer(torch.tanh(self.inner(x)))


class Network(torch.nn.Module):
    def __init__(self, width=16, depth=4):
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Linear(width, width)
        self.blocks = torch.nn.ModuleList(Block(width) for _ in range(depth))
        self.head = torch.nn.Sequential(torch.nn.LayerNorm(width), torch.nn.Linear(width, width))
        self.requires_grad_(False)

    def forward(self, x, sigma):
        h = self.embed(x)
        for block in self.blocks:
            h = block(h, scale=0.5)
        return self.head(h) * sigma


def saved_bytes(fn):
    """Bytes of the tensors autograd keeps for backward while ``fn`` runs forward."""
    total = [0]

    def pack(tensor):
        total[0] += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, total[0]


def test_network_blocks_are_the_outermost_non_container_modules():
    net = Network()
    blocks = network_blocks(net)
    assert blocks[0] is net.embed and blocks[1:5] == list(net.blocks) and blocks[5:] == list(net.head)


def test_block_checkpointing_gives_the_same_gradient_and_restores_the_forwards():
    net = Network()
    x = torch.randn(8, 16, requires_grad=True)  # in a fit, the state depends on the learned grid
    sigma = torch.tensor(2.0, requires_grad=True)

    def loss():
        return checkpointed_model(net)(x, sigma).pow(2).sum()

    loss().backward()
    plain = (x.grad.clone(), sigma.grad.clone())
    x.grad = sigma.grad = None
    calls_before = [b.calls for b in net.blocks]
    with checkpointed_blocks(net) as count:
        assert count == 7
        loss().backward()
    assert torch.allclose(x.grad, plain[0]) and torch.allclose(sigma.grad, plain[1])
    # forward, the call's recompute, each block's own recompute
    assert [b.calls - c for b, c in zip(net.blocks, calls_before)] == [3, 3, 3, 3]
    assert all("forward" not in vars(m) for m in net.modules())


def test_block_checkpointing_keeps_only_block_inputs_and_leaves_no_grad_calls_alone():
    net = Network(width=32, depth=6)
    x = torch.randn(64, 32, requires_grad=True)
    _, plain = saved_bytes(lambda: net(x, 1.0))
    with checkpointed_blocks(net):
        _, blocked = saved_bytes(lambda: net(x, 1.0))
        before = [b.calls for b in net.blocks]
        with torch.no_grad():
            net(x, 1.0)
        assert [b.calls - c for b, c in zip(net.blocks, before)] == [1] * 6
    assert blocked < plain / 3


def test_an_instance_forward_set_by_someone_else_is_put_back_after_an_error():
    net = Network()
    theirs = net.blocks[0].forward
    net.blocks[0].forward = theirs
    with pytest.raises(RuntimeError, match="boom"):
        with checkpointed_blocks(net):
            assert net.blocks[0].forward is not theirs
            raise RuntimeError("boom")
    assert net.blocks[0].forward is theirs
    assert all("forward" not in vars(m) for m in net.blocks[1:])


class InPlaceBlock(torch.nn.Module):
    """Updates one of its inputs in place, as Flux's double blocks do with ``txt += ...``."""

    def __init__(self, width):
        super().__init__()
        self.mix = torch.nn.Linear(2 * width, width)

    def forward(self, img, txt):
        txt += self.mix(torch.cat([img, txt], -1)).tanh()
        return img * txt.sigmoid(), txt


class InPlaceNetwork(torch.nn.Module):
    def __init__(self, width=8, depth=3):
        super().__init__()
        torch.manual_seed(0)
        self.txt_in = torch.nn.Linear(width, width)
        self.blocks = torch.nn.ModuleList(InPlaceBlock(width) for _ in range(depth))
        self.requires_grad_(False)  # weights are constants in a fit: only the state carries gradients

    def forward(self, x, context):
        txt = self.txt_in(context)  # needs no gradient until a block mixes the state into it
        for block in self.blocks:
            x, txt = block(x, txt)
        return x + txt


@pytest.mark.parametrize("context_grad", [False, True])
def test_blocks_that_update_their_inputs_in_place_get_the_same_gradient(context_grad):
    net = InPlaceNetwork()
    x = torch.randn(4, 8, requires_grad=True)
    context = torch.randn(4, 8, requires_grad=context_grad)

    def grads():
        out = checkpointed_model(net)(x, context)
        out = checkpointed_model(net)(out, context)  # two calls, as in an unrolled solver
        inputs = [x, context] if context_grad else [x]
        return torch.autograd.grad(out.pow(2).sum(), inputs)

    plain = grads()
    with checkpointed_blocks(net):
        blocked = grads()
    for a, b in zip(plain, blocked):
        assert torch.allclose(a, b, atol=1e-6)
