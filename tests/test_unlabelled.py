"""``distill --unlabelled`` (issue 21): the pool's loading, deduplication, fingerprint and loss terms.

The end-to-end tests run the real CLI on a tiny two-class folder and a tiny teacher archive (seconds each); the
unit tests check the per-image teacher weights and the pool loss against values computed by hand.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from augkd_edge.config import PoolConfig
from augkd_edge.data.splits import student_split
from augkd_edge.data.unlabelled import content_hashes, hold_out
from augkd_edge.method.unlabelled import PoolTerm, certainty_weights, mixup_labels
from test_hostile import TINY, cli, export_archive, image_folder, refused, tiny_net


# ---- the teacher's per-image weights and the pool loss ------------------------------------------------------


def test_certainty_weights_match_hand_computed_values() -> None:
    right = torch.tensor([-6.0, -4.0, -5.0])  # median -5, population std sqrt(2/3)
    pool = torch.tensor([-5.0, -7.0, 0.0])
    s = math.sqrt(2.0 / 3.0)
    expected = [0.8 * 0.5, 0.8 / (1 + math.exp(-2.0 / s)), 0.8 / (1 + math.exp(5.0 / s))]
    assert certainty_weights(pool, right, 0.8).tolist() == pytest.approx(expected, rel=1e-6)
    assert certainty_weights(pool, torch.tensor([]), 1.0).tolist() == [0.0, 0.0, 0.0]  # never right: no weight
    assert certainty_weights(pool, right, 0.0).tolist() == [0.0, 0.0, 0.0]  # a teacher at chance is turned off


def test_pool_mixup_labels_are_the_teachers_top1_where_it_is_certain() -> None:
    right = torch.tensor([-6.0, -4.0, -5.0])  # the teacher's energies where it is right: median -5
    # energies -logsumexp: row 0 about -6.0 (surer than the median), row 1 about -4.0 (less sure), row 2 ~-5
    logits = torch.tensor([[6.0, 0.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 5.0]])
    e = -torch.logsumexp(logits, 1)
    labels, order = mixup_labels(logits, right, 0.7)
    assert labels.tolist() == [0, -1, 2] and e[2] < -5.0  # c >= 0.5 exactly where E <= the median
    assert order.tolist() == torch.argsort(e).tolist() == [0, 2, 1]
    assert mixup_labels(logits, right, 0.0)[0].tolist() == [-1, -1, -1]  # a teacher at chance labels nothing
    assert mixup_labels(logits, torch.tensor([]), 1.0)[0].tolist() == [-1, -1, -1]  # never right: no label


def _term(mode: str, weights: torch.Tensor | None, **cfg: object) -> PoolTerm:
    cfg = {"kd_gate": "none", **cfg}  # the gates have their own tests
    return PoolTerm(torch.rand(3, 3, 8, 8), PoolConfig(**cfg), mode, teacher=tiny_net(3) if weights is not None else None,
                    kd_weights=weights, mean=(0.5,) * 3, std=(0.5,) * 3, seed=0, augment=None, tau=2.0)


def test_pool_loss_is_weighted_kd_plus_masked_consistency() -> None:
    weak = torch.tensor([[4.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 9.0]])
    strong = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0], [0.0, 1.0, 3.0]])
    teacher = torch.tensor([[0.0, 3.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 5.0]])
    idx = torch.tensor([0, 1, 2])
    w = torch.tensor([1.0, 0.5, 0.0])

    def kl(i: int) -> float:
        p = F.softmax(teacher[i] / 2, 0)
        return float(4 * (p * (p.log() - F.log_softmax(weak[i] / 2, 0))).sum())

    total, stats = _term("kd+consistency", w, kd_weight=2.0, consistency_weight=3.0, threshold=0.9).loss(
        weak, strong, teacher, idx)
    kd = (1.0 * kl(0) + 0.5 * kl(1)) / 3
    confident = [0, 2]  # softmax max of the weak logits: 0.96, 0.58, 0.9998
    cons = sum(float(F.cross_entropy(strong[i:i + 1], weak[i:i + 1].argmax(1))) for i in confident) / 3
    assert float(stats["pool_kd"]) == pytest.approx(kd, rel=1e-5)
    assert float(stats["pool_cons"]) == pytest.approx(cons, rel=1e-5)
    assert float(stats["pool_mask"]) == pytest.approx(2 / 3)
    assert float(total) == pytest.approx(2 * kd + 3 * cons, rel=1e-5)

    # kd_gate agree: the teacher counts only where its top-1 is the student's (images 1 and 2, not 0)
    _, gated = _term("kd+consistency", w, kd_gate="agree").loss(weak, strong, teacher, idx)
    assert float(gated["pool_kd"]) == pytest.approx(0.5 * kl(1) / 3, rel=1e-5)
    assert float(gated["pool_kd_w"]) == pytest.approx(0.5 / 3)
    # Hinton's transfer set: every image weighs 1, no consistency term
    total_kd, plain = _term("kd", w).loss(weak, strong, teacher, idx)
    assert float(total_kd) == pytest.approx(sum(kl(i) for i in range(3)) / 3, rel=1e-5) and "pool_cons" not in plain
    # self-training: no teacher at all
    total_c, only = _term("consistency", None, threshold=0.5).loss(weak, strong, None, idx)
    assert "pool_kd" not in only and float(only["pool_mask"]) == 1.0 and float(total_c) > 0


def test_better_gate_follows_the_student_past_the_teacher() -> None:
    w = torch.tensor([1.0, 1.0, 1.0])
    term = PoolTerm(torch.rand(3, 3, 8, 8), PoolConfig(kd_gate="better"), "kd+consistency", teacher=tiny_net(3),
                    kd_weights=w, mean=(0.5,) * 3, std=(0.5,) * 3, seed=0, augment=None, tau=2.0,
                    teacher_top1=0.8, num_classes=10)
    assert term.gate() == pytest.approx((0.8 - 0.1) / 0.9)  # before any evaluation: the chance-corrected trust
    term.observe(0.5)
    assert term.gate() == pytest.approx(0.6)  # the teacher could mend 0.3 of the student's 0.5 errors
    weak, teacher = torch.zeros(3, 3), torch.eye(3) * 3
    _, stats = term.loss(weak, weak, teacher, torch.arange(3))
    assert float(stats["pool_kd_w"]) == pytest.approx(0.6) and float(stats["pool_gate"]) == pytest.approx(0.6)
    term.observe(0.85)
    assert term.gate() == 0.0  # the student beats the teacher: no KD on the pool, and no teacher pass
    assert term.teacher_logits(torch.rand(2, 3, 8, 8)) is None
    total, shut = term.loss(weak, weak, None, torch.arange(3))
    assert float(shut["pool_kd"]) == 0.0 and float(shut["pool_gate"]) == 0.0 and "pool_cons" in shut
    saved = term.state_dict()
    term.observe(0.2)
    term.load_state_dict(saved)
    assert term.gate() == 0.0  # a resumed epoch gates as the uninterrupted one
    assert _term("kd+consistency", w, kd_gate="none").gate() == 1.0 and _term("kd", w, kd_gate="better").gate() == 1.0
    assert PoolConfig().kd_gate == "where-sure"  # the default, chosen by the suite (docs/method.md)


def test_where_sure_gate_compares_teacher_and_student_where_the_teacher_is_sure() -> None:
    # eval images 0-1: the teacher is sure and right; 2-3: unsure and wrong (overall 0.5, sure-weighted 0.9)
    certainty = torch.tensor([0.9, 0.9, 0.1, 0.1])
    right = torch.tensor([True, True, False, False])
    term = PoolTerm(torch.rand(3, 3, 8, 8), PoolConfig(kd_gate="where-sure"), "kd+consistency", teacher=tiny_net(3),
                    kd_weights=torch.ones(3), mean=(0.5,) * 3, std=(0.5,) * 3, seed=0, augment=None, tau=2.0,
                    teacher_top1=0.5, num_classes=10, eval_certainty=certainty, teacher_eval_right=right)
    assert term.gate() == pytest.approx((0.9 - 0.1) / 0.9)  # before any evaluation the student is at chance
    term.observe(0.5, torch.tensor([False, False, True, True]))  # as good overall, wrong where the teacher is sure
    assert term.gate() == pytest.approx((0.9 - 0.1) / 0.9)  # "better" would shut here: 0.5 vs 0.5
    term.observe(0.5, torch.tensor([True, False, True, False]))
    assert term.gate() == pytest.approx((0.9 - 0.5) / 0.5)
    term.observe(0.5, torch.tensor([True, True, False, False]))
    assert term.gate() == 0.0
    state = term.state_dict()
    term.observe(0.0, torch.zeros(4, dtype=torch.bool))
    term.load_state_dict(state)
    assert term.gate() == 0.0
    with pytest.raises(ValueError, match="where-sure needs"):
        PoolTerm(torch.rand(3, 3, 8, 8), PoolConfig(kd_gate="where-sure"), "kd+consistency", teacher=tiny_net(3),
                 kd_weights=torch.ones(3), mean=(0.5,) * 3, std=(0.5,) * 3, seed=0, augment=None, tau=2.0)


def test_pool_views_are_seeded_by_epoch() -> None:
    term = _term("consistency", None, ratio=2)
    a = term.views(4, term.generator(3), torch.device("cpu"))
    b = term.views(4, term.generator(3), torch.device("cpu"))
    c = term.views(4, term.generator(4), torch.device("cpu"))
    assert a[0].shape == (8, 3, 8, 8) and all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[2], c[2]) or not torch.equal(a[1], c[1])


# ---- the held-out pool and the content hashes -------------------------------------------------------------


def test_held_out_pool_is_half_of_each_class_test_images_and_disjoint() -> None:
    labels = torch.arange(10).repeat_interleave(30)
    splits = student_split(labels, 5, 0, 3, classes=[str(c) for c in range(10)])
    cut = hold_out(splits, labels, 0)
    assert set(cut["pool"]).isdisjoint(cut["test"]) and set(cut["pool"]) | set(cut["test"]) == set(splits["test"])
    assert np.bincount(labels.numpy()[cut["pool"]]).tolist() == [11] * 10  # round(22 * 0.5)
    assert np.array_equal(cut["train"], splits["train"]) and np.array_equal(cut["eval"], splits["eval"])
    assert np.array_equal(hold_out(splits, labels, 0)["pool"], cut["pool"])
    assert not np.array_equal(hold_out(splits, labels, 1)["pool"], cut["pool"])


def test_content_hashes_see_pixels_not_files() -> None:
    x = torch.randint(0, 255, (2, 3, 4, 4)) / 255.0  # 8-bit images, as decoded
    same = x + 1e-4  # another decode of the same file (float noise well inside one 8-bit step)
    other = x.clone()
    other[0, 0, 0, 0] = (other[0, 0, 0, 0] + 0.5) % 1.0
    assert content_hashes(x) == content_hashes(same)
    assert content_hashes(x)[0] != content_hashes(other)[0] and content_hashes(x)[1] == content_hashes(other)[1]


# ---- the real CLI on a tiny folder ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def teacher_2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_archive(tmp_path_factory.mktemp("t2u") / "two.pt2", model=tiny_net(2))


def _new_images(root: Path, count: int, seed: int = 1) -> list[Path]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    paths = [root / f"u{seed}_{i}.png" for i in range(count)]
    for path in paths:
        Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(path)
    return paths


def test_folder_pool_drops_copies_of_test_images_names_them_and_skips_bad_files(tmp_path: Path,
                                                                               teacher_2: Path) -> None:
    data = image_folder(tmp_path / "data")  # 2 classes x 5: train 2, eval 1, test 2 per class
    pool = tmp_path / "pool"
    _new_images(pool / "nested" / "deeper", 6)
    shutil.copytree(data, pool / "copies")  # all 10 labelled/eval/test images
    (pool / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "r"
    res = cli("distill", "--teacher", teacher_2, "--target", data, "--unlabelled", pool, "--method", "augkd",
              *TINY, "--out", out)
    assert res.exit_code == 0, res.output
    assert f"augkd-edge: warning: skipped {pool / 'broken.jpg'}: not an image file Pillow can read" in res.stderr
    assert "Traceback" not in res.output
    summary = json.loads((out / "results.json").read_text())["unlabelled"]
    assert summary["images"] == 6 and summary["kind"] == "folder" and summary["terms"] == "kd+consistency"
    assert summary["dropped"] == {"copy_of_train": 4, "copy_of_eval": 2, "copy_of_test": 4, "repeated": 0}
    assert len(summary["leaked_examples"]) == 5 and all(str(pool / "copies") in f for f in summary["leaked_examples"])
    warning = [line for line in res.stderr.splitlines() if "copies of eval/test images" in line]
    assert len(warning) == 1 and "6 unlabelled images" in warning[0] and summary["leaked_examples"][0] in warning[0]
    assert 0.0 <= summary["kd_trust"] <= 1.0 and 0.0 <= summary["kd_weight_mean"] <= 1.0
    assert summary["kd_gate"] == "where-sure"
    assert f"unlabelled {pool} (folder): 6 images used, 10 dropped; terms kd+consistency, teacher trust" in (
        out / "report.md").read_text()
    recorded = json.loads((out / "splits.json").read_text())["data"]["unlabelled"]
    assert recorded == {k: summary[k] for k in ("spec", "kind", "images", "sha256")}
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("train_pool_cons" in row and "train_pool_kd_w" in row for row in logged)

    # export and bench --eval read the run as before: the pool changes neither the student nor its test split
    test_top1 = json.loads((out / "results.json").read_text())["test"]["top1"]
    assert cli("export", out, "--onnx", "--out", tmp_path / "exp").exit_code == 0
    bench = cli("bench", "run", out / "student.pt", "--backend", "torch", "--iters", "1", "--eval", out,
                "--out", tmp_path / "bench")
    assert bench.exit_code == 0, bench.output
    report = json.loads(next((tmp_path / "bench").rglob("*.json")).read_text())
    assert report["results"][0]["top1"] == pytest.approx(test_top1) and report["results"][0]["eval"]["n"] == 4

    # a changed pool is refused on --resume, naming what changed
    (pool / "broken.jpg").unlink()
    _new_images(pool, 1, seed=2)
    refused(cli("distill", "--teacher", teacher_2, "--target", data, "--unlabelled", pool, "--method", "augkd",
                *TINY, "--out", out, "--resume"), "unlabelled images changed", "6 -> 7 images")


def test_pool_of_nothing_but_copies_is_refused(tmp_path: Path, teacher_2: Path) -> None:
    data = image_folder(tmp_path / "data")
    shutil.copytree(data, tmp_path / "pool")
    out = tmp_path / "r"
    refused(cli("distill", "--teacher", teacher_2, "--target", data, "--unlabelled", tmp_path / "pool",
                "--method", "self-train", *TINY, "--out", out), "no image left", "--unlabelled")
    assert not (out / "results.json").exists()


@pytest.mark.parametrize("spec, needle", [("nowhere", "no such folder"),
                                          ("digits:mnist", "a built-in domain is a pool only as the --target")])
def test_bad_unlabelled_spec_is_one_line(tmp_path: Path, teacher_2: Path, spec: str, needle: str) -> None:
    data = image_folder(tmp_path / "data")
    refused(cli("distill", "--teacher", teacher_2, "--target", data, "--unlabelled", tmp_path / spec
                if spec == "nowhere" else spec, *TINY, "--out", tmp_path / "r"), needle)


def test_pool_methods_without_a_pool_are_refused(tmp_path: Path, teacher_2: Path) -> None:
    data = image_folder(tmp_path / "data")
    refused(cli("distill", "--teacher", teacher_2, "--target", data, "--method", "self-train", *TINY,
                "--out", tmp_path / "r"), "--unlabelled")


@pytest.mark.parametrize("max_images, terms", [(None, "consistency"), (0, "none")])
def test_held_out_pool_of_the_target_end_to_end(tmp_path: Path, max_images: int | None, terms: str) -> None:
    teacher = export_archive(tmp_path / "ten.pt2", model=tiny_net(10))
    out = tmp_path / "r"
    extra = [] if max_images is None else ["--unlabelled-max-images", str(max_images)]
    res = cli("distill", "--teacher", teacher, "--target", "digits:optdigits", "--unlabelled", "digits:optdigits",
              *extra, "--method", "self-train" if max_images is None else "augkd", *TINY, "--out", out)
    assert res.exit_code == 0, res.output
    results = json.loads((out / "results.json").read_text())
    # optdigits: 1797 images; train 2 and eval 1 per class leave 1767, half of each class's rest is the pool
    assert results["split_sizes"] == {"train": 20, "eval": 10, "pool": 885, "test": 882}
    block = results["unlabelled"]
    assert block["kind"] == "held-out"
    kept = 885 - sum(n for why, n in block["dropped"].items() if why != "over_max_images")
    assert block["images"] == (kept if max_images is None else 0)
    assert results["unlabelled"]["terms"] == terms
    splits = json.loads((out / "splits.json").read_text())["splits"]["student"]
    assert set(splits["pool"]).isdisjoint(splits["test"]) and set(splits["pool"]).isdisjoint(splits["train"])


def test_pool_mixup_end_to_end(tmp_path: Path) -> None:
    """--unlabelled-mixup and --unlabelled-anchor-images through the CLI: the share of pool images the teacher labels
    for Module 3's mixtures and the count Module 2 learns anchors for are recorded, and the pool's KD term trains
    (the mixture formula itself: test_method)."""
    teacher = export_archive(tmp_path / "ten.pt2", model=tiny_net(10))
    out = tmp_path / "r"
    res = cli("distill", "--teacher", teacher, "--target", "digits:optdigits", "--unlabelled", "digits:optdigits",
              "--unlabelled-max-images", "64", "--unlabelled-mixup", "--mixup-curriculum", "energy",
              "--unlabelled-anchor-images", "5",
              "--mixup-teacher-trust", "fixed", "--unlabelled-kd-gate", "none", "--method", "augkd", *TINY,
              "--out", out)
    assert res.exit_code == 0, res.output
    block = json.loads((out / "results.json").read_text())["unlabelled"]
    assert block["terms"] == "kd+consistency" and 0.0 < block["mixup_labelled"] <= 1.0
    # Module 2 learnt anchors for the surest of the teacher-labelled pool images too, at most the 5 asked for
    assert 0 < block["anchor_images"] <= min(5, round(block["mixup_labelled"] * block["images"]))
    assert f"Module 2 learnt anchors for {block['anchor_images']} of them" in (out / "report.md").read_text()
    assert json.loads((out / "config.json").read_text())["pool"]["mixup"] is True
    assert f"{block['mixup_labelled']:.0%} mixed towards anchors under the teacher's label" in (
        out / "report.md").read_text()
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any(row.get("stage") == "mixup" and row.get("train_pool_kd", 0) > 0 for row in logged)
