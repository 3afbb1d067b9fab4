"""Anchor fidelity (augkd_edge.fidelity): hand-made cases, and a Module 2 run whose anchors fool the teacher.

The teacher's top-1 on anchors is what Module 2 optimises, so it cannot tell an
anchor that kept its sample from a class prototype that fools the teacher. The
fooling world below is the same tiny linear world as test_anchor_health's, with
an encoder that cannot read the student images (it returns nearly one latent for
all of them, as a generator that cannot draw the student domain leaves it): the
real AnchorStage still makes anchors the teacher labels right, and only the
fidelity shows that they lost their images.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from augkd_edge.config import AnchorConfig, MixupConfig
from augkd_edge.engine import fit
from augkd_edge.fidelity import anchor_share, kd_balance, retrieval_fidelity, similarity
from augkd_edge.health import FIDELITY_LOST, module_health, problems
from augkd_edge.method.anchor import AnchorStage
from augkd_edge.method.mixup import anchor_weight, mixup_latent, teacher_trust
from augkd_edge.models.anchornet import AnchorNet

from test_anchor_health import MEAN, STD, K, L, world  # noqa: F401  (the shared tiny world fixture)


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_identical_images_are_fully_faithful_and_polarity_does_not_matter():
    x, y = _images(20, 0), torch.arange(20) % 4
    assert retrieval_fidelity(x, x, y) == 1.0
    assert retrieval_fidelity(1.0 - x, x, y) == 1.0  # light-on-dark redrawn dark-on-light is still the sample
    assert retrieval_fidelity(0.3 + 0.2 * x, x, y) == 1.0  # brightness and contrast do not matter


def test_shuffled_images_lose_the_sample():
    x, y = _images(40, 1), torch.arange(40) % 4
    perm = torch.cat([torch.nonzero(y == c).flatten().roll(1) for c in range(4)])  # each made image = another's
    order = torch.empty_like(perm)
    order[torch.cat([torch.nonzero(y == c).flatten() for c in range(4)])] = perm
    # each is closest to the image it came from: its own source ranks like any other of its class (chance)
    assert retrieval_fidelity(x[order], x, y) < 0.55


def test_a_constant_blob_is_at_chance():
    x, y = _images(20, 2), torch.arange(20) % 4
    blob = torch.full_like(x, 0.4)
    assert retrieval_fidelity(blob, x, y) == 0.5  # every distractor ties with the source
    same_blob_per_class = torch.stack([x[y == c].mean(0) for c in range(4)])[y]  # a class prototype
    assert 0.3 < retrieval_fidelity(same_blob_per_class, x, y) < 0.75


def test_pool_adds_distractors_and_single_image_classes_are_left_out():
    x, y = _images(8, 3), torch.tensor([0, 0, 1, 1, 2, 2, 3, 4])
    pool, pool_y = _images(30, 4), torch.arange(30) % 5
    assert retrieval_fidelity(x, x, y, pool, pool_y) == 1.0
    assert retrieval_fidelity(x[:1], x[:1], y[:1]) != retrieval_fidelity(x[:1], x[:1], y[:1])  # NaN: no distractor
    assert similarity(x, x).diagonal().allclose(torch.ones(8, dtype=torch.float64))


def test_anchor_share_is_linear_between_floor_and_full():
    assert anchor_share(0.5, 0.6, 0.8) == 0.0 and anchor_share(0.6, 0.6, 0.8) == 0.0
    assert anchor_share(0.7, 0.6, 0.8) == pytest.approx(0.5)
    assert anchor_share(0.95, 0.6, 0.8) == 1.0 and anchor_share(float("nan"), 0.6, 0.8) == 0.0


def test_kd_balance_caps_the_anchor_share_where_ce_outweighs_the_teacher():
    assert kd_balance(0.5) == 1.0 and kd_balance(0.3) == 1.0 and kd_balance(0.0) == 1.0  # u = 0: KD alone
    assert kd_balance(0.8) == pytest.approx(0.25) and kd_balance(1.0) == 0.0
    with pytest.raises(ValueError):
        kd_balance(1.5)
    health = {"anchor": {"fidelity": 0.7}}  # fidelity share 0.5 between floor 0.6 and full 0.8
    assert anchor_weight(MixupConfig(u=0.8), health) == pytest.approx(0.125)
    assert anchor_weight(MixupConfig(u=0.8, anchor_share="fidelity"), health) == pytest.approx(0.5)
    assert anchor_weight(MixupConfig(u=0.8, anchor_share="full"), health) == 1.0
    assert anchor_weight(MixupConfig(u=0.5), health) == pytest.approx(0.5)


def test_mixup_latent_weight_moves_from_no_anchor_to_the_full_anchor():
    torch.manual_seed(0)
    anchor = AnchorNet(L, K, 0.5, 16, True).eval()
    z, y = torch.randn(6, L), torch.arange(6) % K
    with torch.no_grad():
        z_a, _ = anchor(z, y)
        full = mixup_latent(z, y, anchor, 0.2)
        assert torch.allclose(full, 0.8 * z_a + 0.2 * z, atol=1e-6)
        assert torch.equal(mixup_latent(z, y, anchor, 0.2, 0.0), z)  # w = 0: the no-anchor ablation's latent
        half = mixup_latent(z, y, anchor, 0.2, 0.5)
        assert torch.allclose(half, 0.8 * (0.5 * z_a + 0.5 * z) + 0.2 * z, atol=1e-6)


class BlindEncoder(nn.Module):
    """E(x, y) that cannot read the student images: one latent for all, plus a faint trace of the image."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("z0", torch.randn(L, generator=torch.Generator().manual_seed(5)))
        self.register_buffer("read", 1e-3 * torch.randn(3 * 8 * 8, L, generator=torch.Generator().manual_seed(6)))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu = self.z0 + x.flatten(1) @ self.read
        return mu, mu, torch.zeros_like(mu)


def _anchor_health(world, encoder: nn.Module, ckpt, lambda_z: float) -> dict:  # noqa: F811
    torch.manual_seed(0)
    cfg = dataclasses.replace(AnchorConfig(), epochs=30, batch_size=16, hidden=32, lr=1e-2, adapt_encoder=False,
                              lambda_z=lambda_z)
    anchor = AnchorNet(L, K, cfg.alpha, cfg.hidden, cfg.conditional_psi)
    (tx, ty), (ex, ey) = world["train"], world["eval"]
    with torch.no_grad():
        from augkd_edge.data import normalize
        from augkd_edge.losses import energy

        margin = float(energy(world["teacher"](normalize(world["generator"](torch.randn(256, L)), MEAN, STD))).mean())
    stage = AnchorStage(world["teacher"], world["generator"], encoder, anchor, tx, ty, ex, ey, cfg,
                        mean=MEAN, std=STD, seed=0, margin=margin)
    anchor.load_state_dict(fit(stage, cfg.epochs, ckpt, progress=False).best_state["anchor"])
    return module_health(world["teacher"], world["generator"], encoder, anchor, ex, ey, mean=MEAN, std=STD,
                         teacher_domain_energy=margin, pool_images=tx, pool_labels=ty)


def test_fidelity_separates_faithful_anchors_from_teacher_fooling_ones(world, tmp_path):  # noqa: F811
    healthy = _anchor_health(world, world["encoder"], tmp_path / "healthy.ckpt", lambda_z=10.0)  # the default
    # a weak keep-the-latent term lets the label CE rewrite the blind encoder's latent into class prototypes
    fooled = _anchor_health(world, BlindEncoder(), tmp_path / "fooled.ckpt", lambda_z=1.0)
    # the teacher names the label on the fooling anchors as often as on faithful ones: top-1 cannot tell them apart
    assert fooled["anchor"]["teacher_top1"] >= 0.9 and healthy["anchor"]["teacher_top1"] >= 0.9
    assert healthy["anchor"]["fidelity"] >= 0.9, healthy["anchor"]
    assert fooled["anchor"]["fidelity"] < FIDELITY_LOST - 0.1, fooled["anchor"]
    assert fooled["reconstruction"]["fidelity"] < FIDELITY_LOST, fooled["reconstruction"]

    def lost(health: dict) -> list[str]:
        return [p for p in problems(health, 0.5) if "do not resemble their images" in p]

    assert lost(fooled) and not lost(healthy)
    cfg = MixupConfig()
    assert anchor_weight(cfg, healthy) == 1.0 and anchor_weight(cfg, fooled) == 0.0
    assert anchor_weight(dataclasses.replace(cfg, anchor_share="full"), fooled) == 1.0  # the paper's choice
    # with no anchor share the mixtures' teacher reliability is the reconstructions', as for no-anchor
    no_anchor = teacher_trust(cfg, {**fooled, "anchor": None}, 0.5, K)
    assert teacher_trust(cfg, fooled, 0.5, K, anchor_weight(cfg, fooled)) == no_anchor
