"""AuG-KD's losses against values worked out by hand with explicit formulas."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from augkd_edge import losses

T = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
S = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 2.0]])
Y = torch.tensor([0, 2])


def softmax(row: list[float], tau: float = 1.0) -> list[float]:
    e = [math.exp(v / tau) for v in row]
    return [v / sum(e) for v in e]


def kl(p: list[float], q: list[float]) -> float:
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def ce(row: list[float], label: int) -> float:
    return -math.log(softmax(row)[label])


def test_kl_teacher_student_by_hand():
    expected = sum(kl(softmax(t), softmax(s)) for t, s in zip(T.tolist(), S.tolist())) / 2
    assert losses.kl_teacher_student(T, S).item() == pytest.approx(expected, rel=1e-6)
    expected_tau = sum(kl(softmax(t, 2.0), softmax(s, 2.0)) for t, s in zip(T.tolist(), S.tolist())) / 2
    assert losses.kl_teacher_student(T, S, tau=2.0).item() == pytest.approx(expected_tau, rel=1e-6)


def test_teacher_argmax_ce_and_class_balance_by_hand():
    # argmax of T's rows: 0 and 1
    expected = (ce(T[0].tolist(), 0) + ce(T[1].tolist(), 1)) / 2
    assert losses.teacher_argmax_ce(T).item() == pytest.approx(expected, rel=1e-6)
    p = [softmax(r) for r in T.tolist()]
    pbar = [(a + b) / 2 for a, b in zip(*p)]
    assert losses.class_balance(T).item() == pytest.approx(sum(v * math.log10(v) for v in pbar), rel=1e-6)
    # uniform predictions reach the minimum log10(1/3); a single class reaches ~0
    assert losses.class_balance(torch.zeros(4, 3)).item() == pytest.approx(math.log10(1 / 3), rel=1e-6)
    assert losses.class_balance(torch.tensor([[50.0, 0.0, 0.0]] * 4)).item() == pytest.approx(0.0, abs=1e-6)


def test_generator_loss_is_weighted_sum_of_parts():
    bn = torch.tensor(0.7)
    parts = losses.generator_loss(T, S, bn, adv_weight=2.0, ce_weight=3.0, alpha_g=20.0, bn_weight=0.5)
    assert parts["adv"].item() == pytest.approx(-losses.kl_teacher_student(T, S).item())
    total = 2.0 * parts["adv"] + 3.0 * parts["ce"] + 20.0 * parts["balance"] + 0.5 * bn
    assert parts["loss"].item() == pytest.approx(total.item(), rel=1e-6)


def test_bn_stats_hook_value_and_removal():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2), nn.ReLU(), nn.BatchNorm2d(2)).eval()
    net[1].running_mean.copy_(torch.tensor([0.5, -0.5]))
    net[1].running_var.copy_(torch.tensor([2.0, 0.5]))
    x = torch.randn(4, 2, 3, 3)
    with losses.BNStatsHook(net) as hook:
        net(x)
        assert all(len(m._forward_hooks) == 1 for m in (net[1], net[3]))
    with torch.no_grad():
        h1 = net[0](x)
        h3 = net[2](net[1](h1))

    def term(h: torch.Tensor, bn: nn.BatchNorm2d) -> float:
        mean = h.mean(dim=(0, 2, 3))
        var = h.var(dim=(0, 2, 3), unbiased=False)
        return float((mean - bn.running_mean).norm() + (var - bn.running_var).norm())

    assert hook.loss().item() == pytest.approx(term(h1, net[1]) + term(h3, net[3]), rel=1e-5)
    assert all(not m._forward_hooks for m in net.modules())
    # removed on an exception too
    with pytest.raises(RuntimeError):
        with losses.BNStatsHook(net):
            raise RuntimeError("boom")
    assert all(not m._forward_hooks for m in net.modules())


def test_student_kl_is_kl_at_temperature_one_with_grad_to_student_only():
    s = S.clone().requires_grad_(True)
    t = T.clone().requires_grad_(True)
    value = losses.student_kl(s, t)
    assert value.item() == pytest.approx(losses.kl_teacher_student(T, S).item(), rel=1e-5)
    value.backward()
    assert s.grad is not None and t.grad is None


def test_encoder_loss_by_hand():
    z = torch.tensor([[1.0, 2.0], [0.0, -1.0]])
    z_hat = torch.tensor([[1.5, 2.0], [1.0, -1.0]])
    mu = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    logvar = torch.tensor([[0.0, math.log(2.0)], [0.0, 0.0]])
    # squared errors: 0.25 and 1.0; KL row 1: 0.5*mu^2 + 0.5*(2 - 1 - ln 2); row 2: 0
    kl_rows = [0.5 * 1.0 + 0.5 * (2.0 - 1.0 - math.log(2.0)), 0.0]
    assert losses.gaussian_kl(mu, logvar).tolist() == pytest.approx(kl_rows, rel=1e-6)
    expected = ((0.25 + 2.5e-4 * kl_rows[0]) + (1.0 + 2.5e-4 * kl_rows[1])) / 2
    assert losses.encoder_loss(z_hat, z, mu, logvar).item() == pytest.approx(expected, rel=1e-6)


def test_energy_by_hand():
    for tau in (1.0, 2.0):
        expected = [-tau * math.log(sum(math.exp(v / tau) for v in row)) for row in T.tolist()]
        assert losses.energy(T, tau).tolist() == pytest.approx(expected, rel=1e-6)


def test_anchor_loss_by_hand_and_mask_term_is_per_sample():
    latent, alpha = 4, 0.25  # target mask sum per sample: 4 * 0.75 = 3
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]])  # sums 4 and 2
    parts = losses.anchor_loss(T, Y, mask, tau=1.0, lambda_ce=0.1, alpha=alpha)
    energies = [-math.log(sum(math.exp(v) for v in row)) for row in T.tolist()]
    ces = [ce(T[0].tolist(), 0), ce(T[1].tolist(), 2)]
    mask_terms = [abs(4 - 3) / latent, abs(2 - 3) / latent]
    assert parts["energy"].item() == pytest.approx(sum(energies) / 2, rel=1e-6)
    assert parts["ce"].item() == pytest.approx(sum(ces) / 2, rel=1e-6)
    # per sample: 0.25 each; a batch-sum version (|6 - 3| / 4) would give 0.75, a batch mean 0
    assert parts["mask"].item() == pytest.approx(sum(mask_terms) / 2)
    expected = sum(e + 0.1 * c + m for e, c, m in zip(energies, ces, mask_terms)) / 2
    assert parts["loss"].item() == pytest.approx(expected, rel=1e-6)
    # reachable: a mask in [0, 1] hitting the target exactly gives a zero term
    exact = torch.tensor([[1.0, 1.0, 1.0, 0.0], [0.75, 0.75, 0.75, 0.75]])
    assert losses.anchor_loss(T, Y, exact, alpha=alpha)["mask"].item() == pytest.approx(0.0, abs=1e-7)


def test_mixup_distill_loss_by_hand_and_grad_only_to_student():
    u, tau = 0.3, 4.0
    per_sample = [
        u * ce(s, y) + (1 - u) * tau**2 * kl(softmax(t, tau), softmax(s, tau))
        for s, t, y in zip(S.tolist(), T.tolist(), Y.tolist())
    ]
    s = S.clone().requires_grad_(True)
    t = T.clone().requires_grad_(True)
    value = losses.mixup_distill_loss(s, t, Y, u, tau)
    assert value.item() == pytest.approx(sum(per_sample) / 2, rel=1e-5)
    value.backward()
    assert s.grad is not None and t.grad is None


@pytest.mark.parametrize("total,a,b", [(10, 0.6, 0.2), (200, 0.6, 0.2), (7, 1.0, 0.0)])
def test_stage_factor_linear(total: int, a: float, b: float):
    assert losses.stage_factor(0, total, a, b) == pytest.approx(b)
    assert losses.stage_factor(round(a * total), total, a, b) == pytest.approx(1.0)
    assert losses.stage_factor(total, total, a, b) == 1.0
    e = 1
    assert losses.stage_factor(e, total, a, b) == pytest.approx(min(1.0, b + (1 - b) * e / (a * total)))


def test_stage_factor_step_rounds_down_to_tenths():
    values = [losses.stage_factor(e, 10, 0.6, 0.2, "step") for e in range(11)]
    # linear: 0.2, 0.333, 0.467, 0.6, 0.733, 0.867, 1.0, ...
    assert values == pytest.approx([0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 1.0, 1.0, 1.0, 1.0, 1.0])
    assert all(s <= losses.stage_factor(e, 10, 0.6, 0.2) + 1e-12 for e, s in enumerate(values))
    with pytest.raises(ValueError):
        losses.stage_factor(0, 10, schedule="cosine")


def test_bounded_energy_is_a_squared_hinge_at_the_margin():
    energies = [-math.log(sum(math.exp(v) for v in row)) for row in T.tolist()]  # about -2.17 and -1.86
    for margin in (-2.0, -3.0, 0.0):  # -2.0 lies between the two energies: one row is 0
        expected = [max(0.0, e - margin) ** 2 for e in energies]
        assert losses.bounded_energy(T, margin).tolist() == pytest.approx(expected, rel=1e-5, abs=1e-9)
    # below the margin nothing is left to gain: no gradient pushes the logits further
    logits = T.clone().requires_grad_(True)
    losses.bounded_energy(logits, 0.0).sum().backward()
    assert torch.count_nonzero(logits.grad) == 0
    # tau scales the energy: -tau * logsumexp(f / tau)
    e2 = [-2.0 * math.log(sum(math.exp(v / 2.0) for v in row)) for row in T.tolist()]
    assert losses.bounded_energy(T, -5.0, tau=2.0).tolist() == pytest.approx([(e + 5.0) ** 2 for e in e2], rel=1e-6)


def test_bounded_anchor_loss_by_hand():
    latent, alpha, margin, lambda_ce, lambda_z = 4, 0.25, -3.0, 1.0, 0.1
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]])
    z = torch.tensor([[0.0, 1.0, 2.0, 3.0], [1.0, 1.0, 1.0, 1.0]])
    z_a = torch.tensor([[0.0, 1.0, 2.0, 5.0], [0.0, 1.0, 1.0, 1.0]])  # squared distances 4 and 1
    parts = losses.anchor_loss(T, Y, mask, lambda_ce=lambda_ce, alpha=alpha, objective="bounded", margin=margin,
                               z=z, z_a=z_a, lambda_z=lambda_z, certainty="all")
    energies = [-math.log(sum(math.exp(v) for v in row)) for row in T.tolist()]
    hinge = [max(0.0, e - margin) ** 2 for e in energies]
    ces = [ce(T[0].tolist(), 0), ce(T[1].tolist(), 2)]
    mask_terms = [abs(4 - 3) / latent, abs(2 - 3) / latent]
    keep = [4 / latent, 1 / latent]
    assert parts["energy"].item() == pytest.approx(sum(energies) / 2, rel=1e-6)  # raw energy still logged
    assert parts["energy_hinge"].item() == pytest.approx(sum(hinge) / 2, rel=1e-6)
    assert parts["keep"].item() == pytest.approx(sum(keep) / 2, rel=1e-6)
    expected = sum(h + lambda_ce * c + m + lambda_z * k for h, c, m, k in zip(hinge, ces, mask_terms, keep)) / 2
    assert parts["loss"].item() == pytest.approx(expected, rel=1e-6)
    # certainty="label": the hinge bounds the label's own energy -f_y (T rows 2,0,-1 / 0.5,1.5,0; labels 0, 2)
    label = losses.anchor_loss(T, Y, mask, objective="bounded", margin=margin, certainty="label")
    assert label["energy_hinge"].item() == pytest.approx((max(0.0, -2.0 + 3.0) ** 2 + max(0.0, 0.0 + 3.0) ** 2) / 2)
    with pytest.raises(ValueError, match="margin"):
        losses.anchor_loss(T, Y, mask, objective="bounded")
    with pytest.raises(ValueError, match="objective"):
        losses.anchor_loss(T, Y, mask, objective="energy")


def test_bounded_anchor_loss_does_not_reward_a_confident_wrong_class():
    """The collapse the paper's loss allows: a huge logit for a wrong class lowers its loss, not the bounded one's."""
    mask = torch.full((1, 4), 0.75)
    label = torch.tensor([0])
    right = torch.tensor([[6.0, 0.0, 0.0]])
    wrong = torch.tensor([[0.0, 30.0, 0.0]])
    paper = {k: losses.anchor_loss(v, label, mask, lambda_ce=0.1)["loss"].item() for k, v in (("r", right), ("w", wrong))}
    assert paper["w"] < paper["r"]
    for certainty in ("label", "all"):
        bounded = {k: losses.anchor_loss(v, label, mask, objective="bounded", margin=-5.0,
                                         certainty=certainty)["loss"].item() for k, v in (("r", right), ("w", wrong))}
        assert bounded["r"] < bounded["w"]
