"""The AuG-KD stages and baselines on tiny random data with real small models.

What these guard: Module 3's teacher logits come from the teacher (not the
student, as in the public code: docs/method.md, "What differs from the authors'
public code", 1), frozen nets get no gradient and no state change (ibid. 5), BN
hooks are gone after the generator step, the mixup batch is the formula of
docs/method.md ("Module 3"), and every ``--method`` runs a few steps through the
engine's Stage protocol.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from augkd_edge.config import DistillConfig
from augkd_edge.data import IMAGENET_MEAN, IMAGENET_STD, normalize
from augkd_edge.method.anchor import AnchorStage
from augkd_edge.method.baselines import build_baseline_stage
from augkd_edge.data import make_augment
from augkd_edge.evaluate import recompute_bn_stats, teacher_energies
from augkd_edge.method.data_free import DataFreeStage
from augkd_edge.method.mixup import MixupStage, build_mixup_stage
from augkd_edge.models.anchornet import AnchorNet
from augkd_edge.models.generative import Encoder, Generator
from augkd_edge.models.zoo import build_classifier

L, K = 16, 10
MEAN, STD = IMAGENET_MEAN, IMAGENET_STD


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny batch-8 models gain nothing from 2 threads, and OpenMP's spinning threads made
    this file 10x slower (21 s -> 231 s) on a CPU shared with other jobs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    teacher = build_classifier("resnet18", K)
    # a few train-mode passes so the teacher's BN statistics are not the init's (0, 1)
    with torch.no_grad():
        for _ in range(2):
            teacher(torch.randn(16, 3, 32, 32))
    return {
        "teacher": teacher.eval(),
        "student": build_classifier("mobilenet_v3_small", K),
        "generator": Generator(L, width=16),
        "encoder": Encoder(L, K, width=16),
        "anchor": AnchorNet(L, K, hidden=32),
    }


@pytest.fixture()
def fresh(nets):
    """Independent copies so tests do not leak training into each other."""
    return {k: copy.deepcopy(v) for k, v in nets.items()}


@pytest.fixture(scope="module")
def data():
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(16, 3, 32, 32, generator=gen)
    y = torch.arange(16) % K
    return x, y, x[:8].clone(), y[:8].clone()


def cfg() -> DistillConfig:
    return DistillConfig.from_dict(
        {
            "data_free": {"latent_dim": L, "batch_size": 8, "k": 2, "iters_per_epoch": 2, "val_samples": 8},
            "anchor": {"batch_size": 8, "hidden": 32},
            "mixup": {"batch_size": 8, "epochs": 4, "recompute_bn": False},
        }
    )


def run_epoch(stage, epoch: int = 0, steps: int = 2) -> dict[str, torch.Tensor]:
    stage.train_mode()
    out = {}
    for i, batch in enumerate(stage.batches(epoch)):
        if i == steps:
            break
        out = stage.train_step(batch)
    assert out and all(v.dim() == 0 and not v.requires_grad for v in out.values())
    return out


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_untouched(module: nn.Module, before: dict[str, torch.Tensor]) -> None:
    assert all(p.grad is None for p in module.parameters()), "a frozen net received gradients"
    after = module.state_dict()
    changed = [k for k, v in before.items() if not torch.equal(v, after[k])]
    assert not changed, f"frozen net changed: {changed[:3]}"


def mixup_stage(fresh, data, method: str = "augkd", trust=None, **overrides) -> MixupStage:
    c = cfg()
    for key, value in overrides.items():
        setattr(c.mixup, key, value)
    x, y, ex, ey = data
    return build_mixup_stage(
        method, fresh["student"], fresh["teacher"], fresh["generator"], fresh["encoder"],
        x, y, ex, ey, c.mixup, anchor=fresh["anchor"], mean=MEAN, std=STD, seed=0, augment=make_augment("digits"),
        trust=trust,
    )


def test_teacher_share_follows_its_measured_reliability(fresh, data):
    """u per sample: real images get 1 - (1 - u) r_raw, mixtures the f-blend of r_anchor and r_raw."""
    from augkd_edge.method.mixup import reliability

    assert reliability(0.1, 10) == 0.0 and reliability(0.05, 10) == 0.0 and reliability(1.0, 10) == 1.0
    assert reliability(0.55, 10) == pytest.approx(0.5)
    fixed = mixup_stage(fresh, data)
    assert fixed.ce_share(8, 16, 0) == fixed.u == 0.5
    assert fixed.factor(0) == pytest.approx(0.2)  # b
    stage = mixup_stage(fresh, data, trust=(0.0, 0.8))  # teacher at chance on raw images, reads anchors
    b = 1 - (1 - 0.2) * 0.8
    assert stage.factor(0) == pytest.approx(b)  # the curriculum starts from anchors as far as they are read
    u = stage.ce_share(8, 16, 0)
    assert u[:8].tolist() == pytest.approx([1.0] * 8)  # real images: plain CE
    f = stage.factor(0)
    assert u[8:].tolist() == pytest.approx([1 - 0.5 * ((1 - f) * 0.8)] * 8)
    assert stage.ce_share(8, 8, 0) == 1.0
    unreliable_anchors = mixup_stage(fresh, data, trust=(0.5, 0.0))
    assert unreliable_anchors.factor(0) == 1.0  # no mixup from anchors the teacher cannot read


# ---------------------------------------------------------------- Module 1
def test_data_free_trains_g_e_s_leaves_teacher_and_no_hooks(fresh):
    stage = DataFreeStage(
        fresh["teacher"], fresh["student"], fresh["generator"], fresh["encoder"], cfg().data_free,
        mean=MEAN, std=STD, seed=0,
    )
    before = {k: snapshot(fresh[k]) for k in ("teacher", "generator", "encoder", "student")}
    out = run_epoch(stage)
    assert {"g_loss", "g_adv", "g_ce", "g_balance", "g_bn", "loss_s", "loss_e"} <= set(out)
    assert out["g_bn"] > 0
    assert_untouched(fresh["teacher"], before["teacher"])
    for key in ("generator", "encoder", "student"):
        after = fresh[key].state_dict()
        assert any(not torch.equal(v, after[k]) for k, v in before[key].items()), f"{key} did not train"
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in fresh["teacher"].modules())
    stage.end_epoch(0)
    metrics = stage.evaluate()
    assert {"select", "val_loss", "val_encoder", "val_bn"} <= set(metrics)
    assert all(not m._forward_hooks for m in fresh["teacher"].modules())
    # selection excludes the adversarial term (see data_free.py)
    assert metrics["select"] == pytest.approx(metrics["val_loss"] - metrics["val_adv"], rel=1e-5)
    assert stage.evaluate() == metrics  # fixed validation noise: deterministic


def test_data_free_batches_repeat_per_epoch(fresh):
    stage = DataFreeStage(
        fresh["teacher"], fresh["student"], fresh["generator"], fresh["encoder"], cfg().data_free,
        mean=MEAN, std=STD, seed=3,
    )
    a, b = list(stage.batches(1)), list(stage.batches(1))
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(a, b))
    assert not torch.equal(a[0][0], next(iter(stage.batches(2)))[0])
    assert a[0][1].shape == (2, 8, L)


# ---------------------------------------------------------------- Module 2
@pytest.mark.parametrize("adapt", [False, True])
def test_anchor_stage_trains_the_anchor_and_only_with_adaptation_the_encoder(fresh, data, adapt):
    x, y, ex, ey = data
    c = cfg().anchor
    c.adapt_encoder = adapt
    stage = AnchorStage(
        fresh["teacher"], fresh["generator"], fresh["encoder"], fresh["anchor"], x, y, ex, ey, c,
        mean=MEAN, std=STD, seed=0, augment=make_augment("digits"), margin=-5.0,
    )
    before = {k: snapshot(fresh[k]) for k in ("teacher", "generator", "encoder", "anchor")}
    out = run_epoch(stage)
    assert {"loss", "energy", "ce", "mask"} <= set(out)
    assert ({"enc_recon", "enc_ce"} <= set(out)) == adapt
    for key in ("teacher", "generator") + (() if adapt else ("encoder",)):
        assert_untouched(fresh[key], before[key])
    for key in ("anchor",) + (("encoder",) if adapt else ()):
        after = fresh[key].state_dict()
        assert any(not torch.equal(v, after[k]) for k, v in before[key].items()), key
    assert not fresh["encoder"].training  # adapted in eval mode: mu, fixed BN statistics
    metrics = stage.evaluate()
    assert metrics["select"] == metrics["eval_loss"] and 0.0 <= metrics["eval_anchor_teacher_top1"] <= 1.0
    assert "enc_ce" not in str(metrics)  # the selection metric is L_A alone


def test_anchornet_formula_and_initial_mask():
    torch.manual_seed(0)
    net = AnchorNet(L, K, alpha=0.25, hidden=8)
    z, y = torch.randn(4, L), torch.tensor([0, 1, 2, 3])
    z_a, m = net(z, y)
    assert m.mean().item() == pytest.approx(0.75, abs=0.02)  # starts at the target L * (1 - alpha)
    assert torch.allclose(z_a, m * net.psi(m * z, y) + (1 - m) * z, atol=1e-6)
    # psi is class-conditional: the same masked latent maps differently for another label
    assert not torch.allclose(net.psi(m * z, y), net.psi(m * z, (y + 1) % K))
    paper = AnchorNet(L, K, alpha=0.25, hidden=8, conditional_psi=False)
    assert torch.allclose(paper.psi(z, y), paper.psi(z, (y + 1) % K))


# ---------------------------------------------------------------- Module 3
def test_mixup_teacher_logits_come_from_the_teacher(fresh, data):
    """Would have caught the reference bug (KD term computed with the student's own logits)."""
    stage = mixup_stage(fresh, data, u=0.0, tau=2.0)
    seen: dict[str, torch.Tensor] = {}
    # the stage runs the teacher with BN folded into its convs: the same function
    probe = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(stage.teacher(probe), fresh["teacher"].eval()(probe), rtol=1e-4, atol=1e-4)
    h_t = stage.teacher.register_forward_hook(lambda m, i, o: seen.update(t_in=i[0], t_out=o.detach()))
    h_s = fresh["student"].register_forward_hook(lambda m, i, o: seen.update(s_in=i[0], s_out=o.detach()))
    try:
        batch = next(iter(stage.batches(0)))
        loss = stage.train_step(batch)["loss"]
    finally:
        h_t.remove()
        h_s.remove()
    assert torch.equal(seen["t_in"], seen["s_in"])  # the same normalised [x; x_m] batch
    assert seen["t_in"].shape[0] == 2 * len(batch[1])
    assert not torch.allclose(seen["t_out"], seen["s_out"])
    tau = 2.0
    p = torch.log_softmax(seen["t_out"] / tau, 1)
    q = torch.log_softmax(seen["s_out"] / tau, 1)
    expected = tau**2 * (p.exp() * (p - q)).sum(1).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)
    assert loss.item() > 1e-3  # the KD term is not identically zero


def test_mixup_freezes_g_e_a_t_and_trains_the_student(fresh, data):
    stage = mixup_stage(fresh, data)
    frozen = ("teacher", "generator", "encoder", "anchor")
    before = {k: snapshot(fresh[k]) for k in (*frozen, "student")}
    run_epoch(stage)
    for key in frozen:
        assert_untouched(fresh[key], before[key])
    after = fresh["student"].state_dict()
    assert any(not torch.equal(v, after[k]) for k, v in before["student"].items())


def test_mixup_batch_is_the_method_formula(fresh, data):
    stage = mixup_stage(fresh, data)
    x, y = data[0][:4], data[1][:4]
    f = stage.factor(1)
    assert 0.2 < f < 1.0
    with torch.no_grad():
        batch, labels = stage.student_inputs(x, y, 1)
        _, z, _ = fresh["encoder"](x, y)
        z_a, _ = fresh["anchor"](z, y)
        x_m = (1 - f) * fresh["generator"]((1 - f) * z_a + f * z) + f * x
    assert torch.equal(labels, torch.cat([y, y]))
    assert torch.allclose(batch[:4], normalize(x, MEAN, STD), atol=1e-5)
    assert torch.allclose(batch[4:], normalize(x_m, MEAN, STD), atol=1e-5)


def test_no_anchor_and_no_mixup_variants(fresh, data):
    x, y = data[0][:4], data[1][:4]
    no_anchor = mixup_stage(fresh, data, "no-anchor")
    assert no_anchor.anchor is None
    f = no_anchor.factor(0)
    with torch.no_grad():
        batch, _ = no_anchor.student_inputs(x, y, 0)
        x_m = (1 - f) * fresh["generator"](fresh["encoder"](x, y)[1]) + f * x
    assert torch.allclose(batch[4:], normalize(x_m, MEAN, STD), atol=1e-5)
    no_mixup = mixup_stage(fresh, data, "no-mixup")
    assert [no_mixup.factor(e) for e in range(4)] == [1.0] * 4
    with torch.no_grad():
        batch, labels = no_mixup.student_inputs(x, y, 0)
    assert batch.shape[0] == 4 and torch.equal(labels, y)  # [x; x] == [x] for loss and gradients
    for stage in (no_anchor, no_mixup):
        assert torch.isfinite(run_epoch(stage, steps=1)["loss"])
    with pytest.raises(ValueError):
        mixup_stage(fresh, data, "kd")


def test_energy_curriculum_starts_with_the_teachers_surest_samples(fresh, data):
    stage = mixup_stage(fresh, data, curriculum="energy", batch_size=4)
    energies = teacher_energies(fresh["teacher"], data[0], MEAN, STD)
    order = stage.epoch_order(0, torch.Generator().manual_seed(0))
    keep = max(4, int(torch.tensor(stage.factor(0) * 16).ceil()))
    assert len(order) == keep
    assert set(order.tolist()) == set(torch.argsort(energies)[:keep].tolist())
    assert len(stage.epoch_order(3, torch.Generator())) == 16  # f = 1 from epoch a * E
    assert torch.isfinite(run_epoch(stage, steps=1)["loss"])


def test_pool_mixtures_follow_the_labelled_formula_where_the_teacher_is_certain(fresh, data):
    """--unlabelled-mixup: pool images are mixed as labelled ones under the teacher's label, the uncertain (-1)
    stay raw, the curriculum draws the most certain share, and f = 1 (or the option off) reads the weak views."""
    from augkd_edge.config import PoolConfig
    from augkd_edge.method.unlabelled import PoolTerm

    pool = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([2, -1, 0, 1, -1, 3])

    def term(mixup: bool) -> PoolTerm:
        return PoolTerm(pool, PoolConfig(mixup=mixup, kd_gate="none", ratio=2), "kd+consistency",
                        teacher=fresh["teacher"], kd_weights=torch.ones(6), mean=MEAN, std=STD, seed=0,
                        augment=None, tau=2.0, mix_labels=labels, energy_order=torch.tensor([5, 4, 3, 2, 1, 0]))

    c = cfg()
    c.mixup.curriculum = "energy"
    x, y, ex, ey = data
    stage = build_mixup_stage("augkd", fresh["student"], fresh["teacher"], fresh["generator"], fresh["encoder"],
                              x, y, ex, ey, c.mixup, anchor=fresh["anchor"], mean=MEAN, std=STD, seed=0,
                              pool=term(True))
    f = stage.factor(1)
    assert 0.2 < f < 1.0 and stage.pool_fraction(1) == f
    views = stage.pool.views(8, stage.pool.generator(1), torch.device("cpu"), stage.pool_fraction(1))
    keep = int(torch.tensor(f * 6).ceil())
    assert set(views.idx.tolist()) <= set([5, 4, 3, 2, 1, 0][:keep])  # the lowest-energy share only
    with torch.no_grad():
        kd = stage.pool_kd_view(views, 1)
        lab = labels[views.idx]
        _, z, _ = fresh["encoder"](views.raw, lab.clamp_min(0))
        z_a, _ = fresh["anchor"](z, lab.clamp_min(0))
        x_m = (1 - f) * fresh["generator"]((1 - f) * z_a + f * z) + f * views.raw
    mixed = lab >= 0
    assert mixed.any() and (~mixed).any()
    assert torch.allclose(kd[mixed], normalize(x_m, MEAN, STD)[mixed], atol=1e-5)
    assert torch.equal(kd[~mixed], views.weak[~mixed])
    assert stage.pool_kd_view(views, 3) is None  # f = 1 from epoch a * E: the weak views as before
    out = run_epoch(stage, epoch=1, steps=1)
    assert torch.isfinite(out["loss"]) and float(out["pool_kd"]) > 0
    plain = build_mixup_stage("augkd", fresh["student"], fresh["teacher"], fresh["generator"], fresh["encoder"],
                              x, y, ex, ey, c.mixup, anchor=fresh["anchor"], mean=MEAN, std=STD, seed=0,
                              pool=term(False))
    assert plain.pool_fraction(1) == 1.0 and plain.pool_kd_view(views, 1) is None


# ---------------------------------------------------------------- baselines and shared parts
@pytest.mark.parametrize("method", ["no-kd", "kd", "dfkd-finetune"])
def test_baseline_stages_run(fresh, data, method):
    x, y, ex, ey = data
    stage = build_baseline_stage(
        method, fresh["student"], x, y, ex, ey, cfg().mixup, mean=MEAN, std=STD, seed=0,
        teacher=fresh["teacher"], augment=make_augment("digits"),
    )
    assert (stage.teacher is not None) == (method == "kd")
    before = snapshot(fresh["teacher"])
    run_epoch(stage)
    stage.end_epoch(0)
    metrics = stage.evaluate()
    assert 0.0 <= metrics["eval_top1"] <= 1.0 and metrics["select"] >= 1.0 - metrics["eval_top1"]
    assert_untouched(fresh["teacher"], before)


def test_recompute_bn_stats_gives_exact_batch_statistics():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4, momentum=0.01), nn.Flatten(), nn.LazyLinear(2))
    net(torch.rand(2, 3, 4, 4))
    images = torch.rand(10, 3, 4, 4)
    recompute_bn_stats(net.eval(), images, MEAN, STD, batch_size=5)
    with torch.no_grad():
        h = net[0](normalize(images, MEAN, STD))
    assert torch.allclose(net[1].running_mean, h.mean(dim=(0, 2, 3)), atol=1e-5)
    assert net[1].momentum == 0.01 and not net.training


def test_stage_through_the_engine_resumes(fresh, data, tmp_path):
    """The Stage protocol end to end: fit, checkpoint (weights_only), crash, resume from it."""
    from augkd_edge.engine import fit

    stage = mixup_stage(fresh, data, epochs=2)
    real_step = stage.train_step

    def crash_in_second_epoch(batch):
        if batch[2] == 1:
            raise KeyboardInterrupt
        return real_step(batch)

    stage.train_step = crash_in_second_epoch
    with pytest.raises(KeyboardInterrupt):
        fit(stage, 2, tmp_path / "mixup.ckpt", progress=False)
    stage.train_step = real_step
    result = fit(stage, 2, tmp_path / "mixup.ckpt", progress=False)
    assert [h["epoch"] for h in result.history] == [1, 2]
    assert result.history[1]["f"] == pytest.approx(stage.factor(1))
    assert "student" in result.best_state and result.best_epoch in (1, 2)
