"""Module 2 must keep labels: a small fixed run where the paper's loss collapses and ours does not.

The world is tiny and fixed (seeded): a latent of 8, a generator that maps it
linearly to a 3x8x8 image, a linear teacher whose classes are all reachable
from that generator, an encoder that reads the latent back, and labelled
"student images" drawn from the generator. Trained with the real AnchorStage
and engine, the AnchorNet must give anchors the teacher labels correctly and
that are not one image (``augkd_edge.health``); the paper's objective, trained
the same way, sends them to one class, which shows the check can fail.
Also: the health numbers against hand-made cases, and the plain-language
findings.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from augkd_edge.config import AnchorConfig
from augkd_edge.engine import fit
from augkd_edge.health import _pair_distance, module_health, problems
from augkd_edge.method.anchor import AnchorStage
from augkd_edge.models.anchornet import AnchorNet

L, K, SIDE = 8, 4, 8
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


class LinearGenerator(nn.Module):
    latent_dim = L

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(L, 3 * SIDE * SIDE)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(z)).view(-1, 3, SIDE, SIDE)


class LatentReader(nn.Module):
    """E(x, y): least-squares inverse of the generator's linear map (ignores y, like a poor encoder would)."""

    def __init__(self, generator: LinearGenerator) -> None:
        super().__init__()
        w, b = generator.net.weight.detach(), generator.net.bias.detach()
        self.register_buffer("pinv", torch.linalg.pinv(w))
        self.register_buffer("bias", b)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = torch.logit(x.flatten(1).clamp(1e-4, 1 - 1e-4))
        mu = (logits - self.bias) @ self.pinv.T
        return mu, mu, torch.zeros_like(mu)


@pytest.fixture(scope="module")
def world():
    torch.manual_seed(0)
    generator = LinearGenerator().eval()
    encoder = LatentReader(generator).eval()
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(3 * SIDE * SIDE, K)).eval()
    with torch.no_grad():
        teacher[1].weight.mul_(10.0)
        z = torch.randn(400, L)
        x = generator(z)
        from augkd_edge.data import normalize

        labels = teacher(normalize(x, MEAN, STD)).argmax(dim=1)
    # keep a balanced labelled set: the same number of samples per class
    per = min(int((labels == c).sum()) for c in range(K))
    assert per >= 12, "the fixed world must reach every class"
    idx = torch.cat([torch.nonzero(labels == c).flatten()[:12] for c in range(K)])
    x, y = x[idx], labels[idx]
    # a domain shift the teacher has not seen: the student images are the generator's, washed out
    x = 0.5 + 0.4 * (x - 0.5)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(1))
    x, y = x[order], y[order]
    return {"teacher": teacher, "generator": generator, "encoder": encoder,
            "train": (x[:32], y[:32]), "eval": (x[32:], y[32:])}


def train_anchor(world, objective: str, ckpt) -> tuple[AnchorNet, dict]:
    torch.manual_seed(0)
    cfg = dataclasses.replace(AnchorConfig(), objective=objective, epochs=30, batch_size=16, hidden=32, lr=1e-2)
    if objective == "paper":
        cfg.lambda_ce, cfg.conditional_psi, cfg.alpha = 0.1, False, 0.25  # the published settings
    else:
        # the objective is what is tested, not the keep weight: in this 8-dimensional world the default 100 holds
        # the anchors so near their washed-out samples that the teacher reads 0.81 of them (the real default run's
        # anchors stay at 1.00 with 100: docs/method.md, "Anchor fidelity")
        cfg.lambda_z = 10.0
    anchor = AnchorNet(L, K, cfg.alpha, cfg.hidden, cfg.conditional_psi)
    (tx, ty), (ex, ey) = world["train"], world["eval"]
    with torch.no_grad():
        from augkd_edge.data import normalize
        from augkd_edge.losses import energy

        # the teacher's certainty on its own domain (its generator's images)
        margin = float(energy(world["teacher"](normalize(world["generator"](torch.randn(256, L)), MEAN, STD))).mean())
    stage = AnchorStage(world["teacher"], world["generator"], world["encoder"], anchor, tx, ty, ex, ey, cfg,
                        mean=MEAN, std=STD, seed=0, margin=margin)
    result = fit(stage, cfg.epochs, ckpt, progress=False)
    anchor.load_state_dict(result.best_state["anchor"])
    health = module_health(world["teacher"], world["generator"], world["encoder"], anchor, ex, ey,
                           mean=MEAN, std=STD, teacher_domain_energy=margin)
    return anchor, health


def test_bounded_anchors_keep_labels_and_stay_distinct(world, tmp_path):
    from augkd_edge.data import normalize

    with torch.no_grad():
        raw_pred = world["teacher"](normalize(world["eval"][0], MEAN, STD)).argmax(1)
    raw_top1 = float((raw_pred == world["eval"][1]).float().mean())
    _, health = train_anchor(world, "bounded", tmp_path / "a.ckpt")
    anc = health["anchor"]
    assert anc["teacher_top1"] >= 0.9, anc
    assert anc["teacher_top1"] > raw_top1 or raw_top1 == 1.0
    label_share = float(torch.bincount(world["eval"][1]).max()) / len(world["eval"][1])
    assert anc["max_class_share"] <= label_share + 1e-6, anc  # no class gets more anchors than it has images
    assert anc["same_class_distance"] > 0.2 * anc["source_same_class_distance"], anc
    assert anc["energy_mean"] <= anc["teacher_domain_energy_mean"] + 0.5, anc
    assert not [p for p in problems(health, raw_top1) if "COLLAPSED" in p]


def test_paper_objective_collapses_here_and_the_check_says_so(world, tmp_path):
    """The published loss, trained the same way, sends every anchor to one over-confident class."""
    _, health = train_anchor(world, "paper", tmp_path / "a.ckpt")
    anc = health["anchor"]
    assert anc["max_class_share"] > 0.9 and anc["teacher_top1"] < 0.5, anc
    assert anc["energy_mean"] < anc["teacher_domain_energy_mean"] - 5, anc  # far beyond in-domain certainty
    assert any("COLLAPSED" in p for p in problems(health, 0.5))


def test_pair_distance_by_hand():
    a = torch.zeros(1, 1, 2, 2)
    b = torch.ones(1, 1, 2, 2)
    c = torch.full((1, 1, 2, 2), 0.5)
    images = torch.cat([a, b, c, a])
    labels = torch.tensor([0, 0, 0, 1])  # class 0: pairs (a,b)=1, (a,c)=0.5, (b,c)=0.5; class 1 alone
    assert _pair_distance(images, labels) == pytest.approx((1.0 + 0.5 + 0.5) / 3)
    assert _pair_distance(torch.cat([a, a]), torch.tensor([0, 0])) == 0.0


def test_problems_name_collapse_and_failed_reconstructions():
    healthy = {"reconstruction": {"teacher_top1": 0.9},
               "anchor": {"teacher_top1": 0.95, "max_class_share": 0.12, "energy_mean": -12.0,
                          "teacher_domain_energy_mean": -10.0}}
    assert problems(healthy, 0.8) == []
    collapsed = {"reconstruction": {"teacher_top1": 0.3},
                 "anchor": {"teacher_top1": 0.1, "max_class_share": 1.0, "energy_mean": -24.0,
                            "teacher_domain_energy_mean": -10.0}}
    found = problems(collapsed, 0.8)
    assert any("COLLAPSED" in p for p in found) and any("reconstructions" in p for p in found)
    one_class = {"reconstruction": None, "anchor": {**healthy["anchor"], "max_class_share": 0.6}}
    assert any("COLLAPSED" in p for p in problems(one_class, 0.8))
    uncertain = {"reconstruction": None, "anchor": {**healthy["anchor"], "energy_mean": -5.0}}
    assert any("less certain" in p for p in problems(uncertain, 0.8))
    blobs = {"generator": {"teacher_energy_mean": -5.8, "student_raw_energy_mean": -8.9}, "reconstruction": None,
             "anchor": None}
    assert any("generator's own samples" in p for p in problems(blobs, 0.8))
    sharp = {**blobs, "generator": {"teacher_energy_mean": -12.0, "student_raw_energy_mean": -8.9}}
    assert problems(sharp, 0.8) == []
