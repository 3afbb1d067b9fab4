"""The generator's fused upsample+conv (UpsampleConv2d) computes the same function as before.

UpsampleConv2d replaces ``nn.Upsample(2, nearest)`` + ``nn.Conv2d(3x3, pad 1)``
by one stride-2 transposed conv with summed taps: only the association of the
floating-point sums may differ, so float64 results must agree to ~1e-12, the
gradients too, and old checkpoints must load (same state_dict keys and shapes).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from augkd_edge.models.generative import Generator, UpsampleConv2d


def _reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    return F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), weight, bias, padding=1)


def _old_up_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="nearest"),
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.LeakyReLU(0.2, inplace=True),
    )


class _OldGenerator(nn.Module):
    """The Generator as it was before UpsampleConv2d (same construction order, so same RNG use)."""

    def __init__(self, latent_dim: int = 100, img_size: int = 32, channels: int = 3, width: int = 64):
        super().__init__()
        self.init_size, self.width = img_size // 4, width
        self.project = nn.Linear(latent_dim, 2 * width * self.init_size**2)
        self.body = nn.Sequential(
            nn.BatchNorm2d(2 * width),
            _old_up_block(2 * width, 2 * width),
            _old_up_block(2 * width, width),
            nn.Conv2d(width, channels, 3, padding=1),
            nn.Sigmoid(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(self.project(z).view(z.shape[0], 2 * self.width, self.init_size, self.init_size))


def _layout(t: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("size", [(4, 6), (5, 7), (1, 1), (6, 3)])
def test_float64_output_and_gradients_equal_upsample_then_conv(
    size: tuple[int, int], batch: int, channels_last: bool
) -> None:
    gen = torch.Generator().manual_seed(sum(size) * 10 + batch)
    x = _layout(torch.randn(batch, 5, *size, generator=gen, dtype=torch.float64), channels_last)
    conv = UpsampleConv2d(5, 4).double()
    with torch.no_grad():
        conv.weight.copy_(torch.randn(4, 5, 3, 3, generator=gen, dtype=torch.float64))
    if channels_last:
        conv.to(memory_format=torch.channels_last)
    grad_out = torch.randn(batch, 4, 2 * size[0], 2 * size[1], generator=gen, dtype=torch.float64)

    x_new = x.clone().requires_grad_(True)
    y_new = conv(x_new)
    y_new.backward(grad_out)
    x_ref = x.clone().requires_grad_(True)
    w_ref = conv.weight.detach().clone().requires_grad_(True)
    y_ref = _reference(x_ref, w_ref)
    y_ref.backward(grad_out)

    assert y_new.shape == y_ref.shape == (batch, 4, 2 * size[0], 2 * size[1])
    assert (y_new - y_ref).abs().max().item() < 1e-12
    assert (x_new.grad - x_ref.grad).abs().max().item() < 1e-10
    assert (conv.weight.grad - w_ref.grad).abs().max().item() < 1e-10
    if channels_last and min(size) > 1:  # same output layout as conv2d would give
        assert y_new.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("channels_last", [False, True])
def test_float32_within_1e5_relative(channels_last: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    x = _layout(torch.randn(3, 16, 8, 9, generator=gen), channels_last)
    conv = UpsampleConv2d(16, 8)
    if channels_last:
        conv.to(memory_format=torch.channels_last)
    with torch.no_grad():
        y_new, y_ref = conv(x), _reference(x, conv.weight)
    torch.testing.assert_close(y_new, y_ref, rtol=1e-5, atol=1e-5 * y_ref.abs().max().item())


def test_bias_is_honoured() -> None:
    """After a BN fold the conv carries a bias; the fused form must add it like conv2d."""
    conv = UpsampleConv2d(3, 2, bias=True).double()
    x = torch.randn(2, 3, 5, 4, dtype=torch.float64)
    assert (conv(x) - _reference(x, conv.weight, conv.bias)).abs().max().item() < 1e-12


def test_state_dict_keys_unchanged() -> None:
    expected = [
        ("project.weight", (1024, 100)), ("project.bias", (1024,)),
        ("body.0.weight", (16,)), ("body.0.bias", (16,)), ("body.0.running_mean", (16,)),
        ("body.0.running_var", (16,)), ("body.0.num_batches_tracked", ()),
        ("body.1.1.weight", (16, 16, 3, 3)),
        ("body.1.2.weight", (16,)), ("body.1.2.bias", (16,)), ("body.1.2.running_mean", (16,)),
        ("body.1.2.running_var", (16,)), ("body.1.2.num_batches_tracked", ()),
        ("body.2.1.weight", (8, 16, 3, 3)),
        ("body.2.2.weight", (8,)), ("body.2.2.bias", (8,)), ("body.2.2.running_mean", (8,)),
        ("body.2.2.running_var", (8,)), ("body.2.2.num_batches_tracked", ()),
        ("body.3.weight", (3, 8, 3, 3)), ("body.3.bias", (3,)),
    ]  # fmt: skip
    got = [(k, tuple(v.shape)) for k, v in Generator(100, 32, width=8).state_dict().items()]
    assert got == expected
    assert [(k, tuple(v.shape)) for k, v in _OldGenerator(100, 32, width=8).state_dict().items()] == expected


def test_same_initialisation_as_before() -> None:
    """Same parameters consumed from the RNG in the same order: seeded runs start where they did."""
    torch.manual_seed(3)
    new = Generator(20, 16, width=8)
    torch.manual_seed(3)
    old = _OldGenerator(20, 16, width=8)
    for (k, a), (_, b) in zip(new.state_dict().items(), old.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


@pytest.mark.parametrize("channels_last", [False, True])
def test_generator_matches_old_formulation(channels_last: bool) -> None:
    torch.manual_seed(0)
    new = Generator(20, 16, width=8).double()
    old = _OldGenerator(20, 16, width=8).double()
    old.load_state_dict(new.state_dict())  # old checkpoints <-> new model, strict
    new.load_state_dict(old.state_dict())
    if channels_last:
        new.to(memory_format=torch.channels_last)
        old.to(memory_format=torch.channels_last)
    z = torch.randn(3, 20, dtype=torch.float64)

    new.train(), old.train()  # batch statistics, and the running stats get updated alike
    y_new, y_old = new(z), old(z)
    assert (y_new - y_old).abs().max().item() < 1e-12
    y_new.pow(2).sum().backward()
    y_old.pow(2).sum().backward()
    for (k, p), (_, q) in zip(new.named_parameters(), old.named_parameters(), strict=True):
        assert (p.grad - q.grad).abs().max().item() < 1e-10, k
    for (k, a), (_, b) in zip(new.state_dict().items(), old.state_dict().items(), strict=True):
        assert (a.double() - b.double()).abs().max().item() < 1e-12, k

    new.eval().requires_grad_(False), old.eval().requires_grad_(False)  # Module 2: frozen, grads to z
    z_new, z_old = z.clone().requires_grad_(True), z.clone().requires_grad_(True)
    new(z_new).sum().backward()
    old(z_old).sum().backward()
    assert (z_new.grad - z_old.grad).abs().max().item() < 1e-10


def test_generator_float32_and_autocast() -> None:
    torch.manual_seed(0)
    new = Generator(20, 16, width=8).eval()
    old = _OldGenerator(20, 16, width=8).eval()
    old.load_state_dict(new.state_dict())
    z = torch.randn(4, 20)
    with torch.no_grad():
        torch.testing.assert_close(new(z), old(z), rtol=1e-5, atol=1e-6)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y_new, y_old = new(z).float(), old(z).float()
    assert (y_new - y_old).abs().max().item() < 2e-2  # bf16 rounding of a [0, 1] sigmoid output
