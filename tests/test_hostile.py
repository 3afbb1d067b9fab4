"""Hostile inputs through the real CLI: one test (or more) per row of the README's
"Bad inputs and what you get" table that issue 14 added.

Every refusal must be one line on stderr, exit code 2, no traceback, and (where
the case is about it) nothing written. Runs use tiny settings and a tiny teacher
so that each one takes seconds on a 2-core CPU.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from augkd_edge.cli import main

TINY = [
    "--df-epochs", "1", "--df-iters-per-epoch", "1", "--df-batch-size", "4", "--df-val-samples", "8", "--df-k", "1",
    "--df-gen-width", "8", "--anchor-epochs", "1", "--anchor-batch-size", "16",
    "--mixup-epochs", "1", "--mixup-batch-size", "16", "--shots", "2", "--eval-per-class", "1", "--quiet",
]


def cli(*args: str) -> "click.testing.Result":  # noqa: F821
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def refused(res: "click.testing.Result", *needles: str) -> str:  # noqa: F821
    """The one error line of a refused command (exit 2, no traceback), checked for ``needles``."""
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("augkd-edge: error: "), res.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def tiny_net(classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, classes)).eval()


def export_archive(path: Path, size: int = 32, batch: int = 2, model: nn.Module | None = None) -> Path:
    """A ``torch.export`` archive saved the default way (static batch ``batch``)."""
    model = model or tiny_net()
    torch.export.save(torch.export.export(model, (torch.zeros(batch, 3, size, size),)), str(path))
    return path


# ---- 1. a .pt2 archive that would run code -------------------------------------------------


class _Payload:
    """Unpickling this runs ``touch marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


def _pickled(marker: Path) -> bytes:
    buf = io.BytesIO()
    torch.save(_Payload(marker), buf)
    return buf.getvalue()


def _rewrite(src: Path, dst: Path, edit) -> Path:  # type: ignore[no-untyped-def]
    """Copy a zip archive, passing each (name, bytes) through ``edit`` (None drops it; extra entries via a list)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            for name, data in edit(info.filename, zin.read(info.filename)):
                zout.writestr(name, data)
    return dst


def _evil_archive(kind: str, tmp_path: Path, marker: Path) -> Path:
    good = export_archive(tmp_path / "good.pt2")
    payload = _pickled(marker)

    def edit(name: str, data: bytes):  # type: ignore[no-untyped-def]
        root = name.split("/", 1)[0]
        if kind == "weight" and name.endswith("_weights_config.json"):
            config = json.loads(data)
            first = next(iter(config["config"].values()))
            first["use_pickle"] = True
            return [(name, json.dumps(config).encode())]
        if kind == "weight" and name.endswith("/data/weights/weight_0"):
            return [(name, payload)]
        if kind == "constant" and name.endswith("_constants_config.json"):
            config = {"config": {"lifted_tensor_0": {"path_name": "tensor_0", "is_param": False, "use_pickle": True,
                                                     "tensor_meta": None}}}
            return [(name, json.dumps(config).encode()), (f"{root}/data/constants/tensor_0", payload)]
        if kind == "sample_inputs" and "/data/sample_inputs/" in name:
            return [(name, payload)]
        if kind == "aoti" and name.endswith("/archive_format"):
            return [(name, data), (f"{root}/data/aotinductor/model/model.so", b"\x7fELF")]
        if kind == "guards" and "/models/" in name:
            program = json.loads(data)
            program["guards_code"] = [f"__import__('os').system('touch {marker}')"]
            return [(name, json.dumps(program).encode())]
        if kind == "target" and "/models/" in name:
            program = json.loads(data)
            program["graph_module"]["graph"]["nodes"][0]["target"] = "torch.serialization.os.system"
            return [(name, json.dumps(program).encode())]
        return [(name, data)]

    return _rewrite(good, tmp_path / f"evil-{kind}.pt2", edit)


@pytest.mark.parametrize("kind", ["weight", "constant", "sample_inputs", "guards"])
def test_pt2_payloads_are_live(kind: str, tmp_path: Path) -> None:
    """The payloads the refusal tests use do run code when torch loads the archive itself."""
    marker = tmp_path / "ran"
    with pytest.raises(Exception):
        torch.export.load(str(_evil_archive(kind, tmp_path, marker))).module()(torch.zeros(2, 3, 32, 32))
    assert marker.exists(), "the test payload is not live; the refusal test below would prove nothing"


@pytest.mark.parametrize("kind, entry", [
    ("weight", "model_weights_config.json: 0.weight"),
    ("constant", "model_constants_config.json: lifted_tensor_0"),
    ("sample_inputs", "data/sample_inputs/model.pt"),
    ("aoti", "data/aotinductor/model/model.so"),
    ("guards", "models/model.json"),
    ("target", "torch.serialization.os.system"),
])
def test_pt2_teacher_that_would_run_code_is_refused(kind: str, entry: str, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    evil = _evil_archive(kind, tmp_path, marker)
    out = tmp_path / "run"
    res = cli("distill", "--teacher", evil, "--out", out, "--cache-dir", tmp_path / "cache", *TINY)
    refused(res, str(evil), entry, "refused")
    assert not marker.exists(), "code from the archive ran"
    assert not out.exists(), "a refused run wrote its folder"


# ---- 2. TorchScript teachers, end to end ------------------------------------------------------


@pytest.fixture(scope="module")
def torchscript_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torchvision

    path = tmp_path_factory.mktemp("ts") / "resnet18.ts.pt"
    torch.manual_seed(0)
    torch.jit.script(torchvision.models.resnet18(num_classes=10).eval()).save(str(path))
    return path


@pytest.mark.parametrize("method", ["augkd", "kd"])
def test_torchscript_teacher_distills(method: str, torchscript_teacher: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = cli("distill", "--teacher", torchscript_teacher, "--method", method, "--out", out, *TINY)
    assert res.exit_code == 0, res.output
    assert json.loads((out / "results.json").read_text())["method"] == method


# ---- 3. the teacher probe uses the run's input size and batch sizes --------------------------


def test_static_batch_export_teacher_runs_at_every_batch(tmp_path: Path) -> None:
    teacher = export_archive(tmp_path / "b2.pt2", batch=2)
    out = tmp_path / "run"
    res = cli("distill", "--teacher", teacher, "--method", "augkd", "--out", out, *TINY)
    assert res.exit_code == 0, res.output


def test_export_teacher_probed_at_the_run_input_size(tmp_path: Path) -> None:
    big = export_archive(tmp_path / "s64.pt2", size=64)
    res = cli("distill", "--teacher", big, "--method", "kd", "--input-size", "64", "--out", tmp_path / "r64", *TINY)
    assert res.exit_code == 0, res.output
    small = export_archive(tmp_path / "s32.pt2", size=32)
    res = cli("distill", "--teacher", small, "--input-size", "48", "--out", tmp_path / "r48", *TINY)
    refused(res, str(small), "(2, 3, 32, 32)", "--input-size 32")
    assert not (tmp_path / "r48").exists()


# ---- 5. unwritable or impossible output paths -------------------------------------------------


def _no_permission_dir(tmp_path: Path) -> Path:
    """A folder path in which this user cannot create anything (root ignores mode bits: use /sys)."""
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        return locked / "out"
    if not os.path.isdir("/sys") or os.access("/sys", os.W_OK) and not _mkdir_fails("/sys/augkd-edge-test"):
        pytest.skip("no folder here refuses writes to root")
    return Path("/sys/augkd-edge-test/out")


def _mkdir_fails(path: str) -> bool:
    try:
        os.mkdir(path)
    except OSError:
        return True
    os.rmdir(path)
    return False


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_archive(tmp_path_factory.mktemp("teacher") / "tiny.pt2")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory, tiny_teacher: Path) -> Path:
    """A finished kd run of the tiny teacher (for export / bench)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    res = cli("distill", "--teacher", tiny_teacher, "--method", "kd", "--out", out, *TINY)
    assert res.exit_code == 0, res.output
    return out


def test_unwritable_out_is_one_line_in_every_command(tmp_path: Path, tiny_teacher: Path, finished_run: Path) -> None:
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    locked = _no_permission_dir(tmp_path)
    for bad, why in ((a_file / "sub", "is a file"), (locked, "cannot write in")):
        commands = [
            ["distill", "--teacher", tiny_teacher, "--method", "kd", *TINY, "--out", bad],
            ["teacher", "--data", "digits:optdigits", "--epochs", "1", "--out", bad],
            ["export", finished_run, "--onnx", "--out", bad],
            ["bench", "run", finished_run / "student.pt", "--backend", "torch", "--iters", "1", "--out", bad],
        ]
        for args in commands:
            refused(cli(*args), str(bad), why)
    res = cli("distill", "--method", "kd", *TINY, "--out", tmp_path / "r", "--cache-dir", a_file / "cache")
    refused(res, "--cache-dir", str(a_file / "cache"), "is a file")
    assert not (tmp_path / "r").exists()


def test_disk_full_while_checkpointing_names_the_file_and_keeps_the_last_one(
        tmp_path: Path, tiny_teacher: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from augkd_edge import checkpoint

    out = tmp_path / "run"
    args = ["distill", "--teacher", tiny_teacher, "--method", "kd", *TINY, "--mixup-epochs", "3", "--out", out]
    writes = {"n": 0}
    real_fsync = os.fsync

    def fsync_fills_the_disk_on_the_second_checkpoint(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".tmp") and ".kd.ckpt." in os.readlink(f"/proc/self/fd/{fd}"):
            writes["n"] += 1
            if writes["n"] == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(checkpoint.os, "fsync", fsync_fills_the_disk_on_the_second_checkpoint)
    refused(cli(*args), str(out / "ckpt" / "kd.ckpt"), "No space left on device", "previous version is kept")
    monkeypatch.undo()
    assert checkpoint.load_safe(out / "ckpt" / "kd.ckpt")["epoch"] == 1
    assert [p.name for p in (out / "ckpt").iterdir()] == ["kd.ckpt"], "temporary file left behind"


# ---- 6. a failed run does not block its own fix; 11. --resume of nothing ----------------------


def test_failed_run_leaves_its_folder_reusable(tmp_path: Path, tiny_teacher: Path) -> None:
    out, cache = tmp_path / "run", tmp_path / "cache"
    refused(cli("distill", "--teacher", tiny_teacher, "--target", tmp_path / "typo", *TINY, "--out", out),
            str(tmp_path / "typo"))
    assert not out.exists(), "a run that failed on its inputs wrote its folder"
    refused(cli("distill", "--teacher-arch", "resnet_typo", *TINY, "--out", out, "--cache-dir", cache),
            "resnet_typo")
    assert not out.exists() and not cache.exists(), "a failed run left a half-made folder"
    # a folder an older version left behind: config.json of another target, no stage started
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"student_data": "digits:mnist", "method": "kd"}))
    res = cli("distill", "--teacher", tiny_teacher, "--method", "kd", *TINY, "--out", out, "--resume")
    assert res.exit_code == 0, res.output


def test_resume_of_a_folder_without_a_run_is_refused(tmp_path: Path, tiny_teacher: Path) -> None:
    out = tmp_path / "typo"
    res = cli("distill", "--teacher", tiny_teacher, "--method", "kd", *TINY, "--out", out, "--resume")
    refused(res, str(out), "holds no run", "drop --resume")
    assert not out.exists()


# ---- 9. option values that used to crash later --------------------------------------------------


@pytest.mark.parametrize("args, needle", [
    (["distill", "--seed", "-1"], "seed = -1 is invalid; use a value from 0 to 2**32 - 1"),
    (["distill", "--seed", str(2**32)], "numpy's seed range"),
    (["distill", "--df-batch-size", "1"], "data_free.batch_size = 1 is invalid; use at least 2 (BatchNorm"),
    (["distill", "--teacher-batch-size", "1"], "teacher.batch_size = 1"),
    (["distill", "--anchor-batch-size", "1"], "anchor.batch_size = 1"),
    (["distill", "--mixup-batch-size", "1"], "mixup.batch_size = 1"),
    (["teacher", "--batch-size", "1"], "--batch-size 1: use at least 2 (BatchNorm"),
    (["teacher", "--seed", "-1"], "--seed -1: use a value from 0"),
])
def test_out_of_range_options_are_refused_with_the_reason(args: list[str], needle: str, tmp_path: Path) -> None:
    refused(cli(*args, "--out", tmp_path / "o"), needle)
    assert not (tmp_path / "o").exists()


# ---- image folders: 4. link loops, 13. skipped-file warnings ----------------------------------------


def image_folder(root: Path, classes: tuple[str, ...] = ("a", "b"), per_class: int = 5) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def teacher_2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_archive(tmp_path_factory.mktemp("t2") / "two.pt2", model=tiny_net(2))


def test_symlink_loop_in_data_is_skipped_and_named(tmp_path: Path, teacher_2: Path) -> None:
    data = image_folder(tmp_path / "data")
    (data / "a" / "loop").symlink_to(data / "a", target_is_directory=True)
    (data / "b" / "self").symlink_to(data / "b" / "self")
    res = cli("distill", "--teacher", teacher_2, "--target", data, "--method", "kd", *TINY, "--out", tmp_path / "r")
    assert res.exit_code == 0, res.output
    assert f"augkd-edge: warning: skipped link {data / 'a' / 'loop'}: it leads to {data / 'a'}" in res.stderr
    assert f"augkd-edge: warning: skipped link {data / 'b' / 'self'}: " in res.stderr


def test_skipped_files_are_one_clean_line_each_with_a_count(tmp_path: Path, teacher_2: Path) -> None:
    data = image_folder(tmp_path / "data")
    bad = [data / "a" / f"bad{i}.jpg" for i in range(7)]
    for path in bad:
        path.write_bytes(b"not an image")
    res = cli("distill", "--teacher", teacher_2, "--target", data, "--method", "kd", *TINY, "--out", tmp_path / "r")
    assert res.exit_code == 0, res.output
    warned = [line for line in res.stderr.splitlines() if line.startswith("augkd-edge: warning: ")]
    assert warned == [f"augkd-edge: warning: skipped {p}: not an image file Pillow can read" for p in bad] + [
        f"augkd-edge: warning: {data}: skipped 7 of 17 files (listed above); using 10 images"]
    assert "warnings.warn" not in res.stderr and "_load_cached" not in res.stderr and "Warning" not in res.stderr


# ---- 8. changed data is noticed ------------------------------------------------------------


def test_images_added_after_training_are_noticed_by_export_and_bench(tmp_path: Path, teacher_2: Path) -> None:
    from PIL import Image

    data = image_folder(tmp_path / "data")
    run = tmp_path / "run"
    res = cli("distill", "--teacher", teacher_2, "--target", data, "--method", "kd", *TINY, "--out", run)
    assert res.exit_code == 0, res.output
    assert json.loads((run / "splits.json").read_text())["data"]["student"]["per_class"] == {"a": 5, "b": 5}
    Image.new("RGB", (12, 12)).save(data / "a" / "0a.png")  # sorts before 1.png: shifts the indices
    refused(cli("export", run, "--onnx", "--out", tmp_path / "exp"), "changed since training", "'a' 5 -> 6")
    refused(cli("bench", "run", run / "student.pt", "--backend", "torch", "--iters", "1", "--eval", run,
                "--out", tmp_path / "bench"), "changed since training", "'a' 5 -> 6")
    (data / "a" / "0a.png").unlink()
    (data / "b" / "0.png").write_bytes((data / "b" / "0.png").read_bytes() + b"\0")  # same count, other bytes
    refused(cli("export", run, "--onnx", "--out", tmp_path / "exp"), "renamed, replaced or resized")


# ---- 7. the class names an augkd-edge teacher file records ------------------------------------------


def _model_file(path: Path, class_names: list[str]) -> Path:
    from augkd_edge.models.loading import ModelMeta, save_model_file
    from augkd_edge.models.zoo import build_classifier

    torch.manual_seed(0)
    model = build_classifier("mobilenet_v3_small", len(class_names)).eval()
    return save_model_file(path, model, ModelMeta("mobilenet_v3_small", len(class_names), class_names))


def test_teacher_file_with_other_class_names_is_refused(tmp_path: Path) -> None:
    data = image_folder(tmp_path / "data", classes=("a", "b", "z"))
    teacher = _model_file(tmp_path / "t.pt", ["a", "b", "ç"])
    res = cli("distill", "--teacher", teacher, "--target", data, "--method", "kd", *TINY, "--out", tmp_path / "r")
    refused(res, str(teacher), "teacher: ['a', 'b', 'ç']", "student data: ['a', 'b', 'z']",
            "only in the teacher: ['ç']")
    assert not (tmp_path / "r").exists()


def test_teacher_file_with_the_same_names_in_another_order_is_mapped(tmp_path: Path) -> None:
    from augkd_edge.models.loading import load_model_file, load_teacher

    teacher = _model_file(tmp_path / "t.pt", ["b", "a"])
    x = torch.rand(3, 3, 32, 32)
    original, _ = load_model_file(teacher)
    mapped = load_teacher(teacher, None, 2, class_names=["a", "b"])
    assert torch.equal(mapped(x), original(x)[:, [1, 0]])
    data = image_folder(tmp_path / "data")
    res = cli("distill", "--teacher", teacher, "--target", data, "--method", "kd", *TINY, "--out", tmp_path / "r")
    assert res.exit_code == 0, res.output


# ---- 10. messages that pointed at the wrong cause ---------------------------------------------------


def test_teacher_with_nan_weights_is_refused_before_training(tmp_path: Path) -> None:
    model = tiny_net()
    with torch.no_grad():
        model[0].weight[0, 0, 0, 0] = float("nan")
    teacher = export_archive(tmp_path / "nan.pt2", model=model)
    res = cli("distill", "--teacher", teacher, *TINY, "--out", tmp_path / "r")
    line = refused(res, str(teacher), "outputs NaN or Inf", "1 NaN/Inf values", "the teacher file is broken")
    assert "data_free.ckpt" not in line and not (tmp_path / "r").exists()


def test_single_class_target_names_the_data(tmp_path: Path, tiny_teacher: Path) -> None:
    data = image_folder(tmp_path / "one", classes=("only",))
    refused(cli("distill", "--teacher", tiny_teacher, "--target", data, *TINY, "--out", tmp_path / "r"),
            f"student data '{data}' has one class ('only')")


def test_wrong_architecture_state_dict_is_summarised(tmp_path: Path) -> None:
    import torchvision

    state = tmp_path / "r18.pt"
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), state)
    res = cli("distill", "--teacher", state, "--teacher-arch", "mobilenet_v3_small", *TINY, "--out", tmp_path / "r")
    line = refused(res, str(state), "missing keys (", "unexpected keys (", ", ...")
    assert len(line) < 1000, f"{len(line)} characters"


def test_teacher_also_eval_with_other_classes_is_refused_before_training(tmp_path: Path) -> None:
    other = image_folder(tmp_path / "other", classes=("cat", "dog"))
    res = cli("teacher", "--data", "digits:optdigits", "--also-eval", other, "--epochs", "50", "--out", tmp_path / "t")
    refused(res, "only in the student domain: ['cat', 'dog']")
    assert not (tmp_path / "t").exists()


@pytest.mark.parametrize("args, needle", [
    (["distill", "--teacher", "{tmp}"], "is a directory"),
    (["distill", "--out", "{tmp}/file"], "is a file"),
    (["bench", "run", "{tmp}/missing.onnx", "--out", "{tmp}/b"], "does not exist"),
])
def test_path_kind_mistakes_are_click_usage_errors(args: list[str], needle: str, tmp_path: Path) -> None:
    """click's own 3-line usage error, exit 2, no traceback (the README table says so)."""
    (tmp_path / "file").write_text("x")
    res = cli(*[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert res.exit_code == 2 and needle in res.stderr and "Usage:" in res.stderr and "Traceback" not in res.stderr


# ---- 12. export parity scales with the logits ---------------------------------------------------


def test_parity_tolerance_scales_with_the_logits() -> None:
    import numpy as np

    from augkd_edge.export.parity import compare_logits

    ref = np.linspace(-66, 66, 40, dtype=np.float32).reshape(4, 10)
    cand = ref + np.float32(2.7e-4)  # the short run's figures: same decisions, float32 rounding of big logits
    assert compare_logits(ref, cand).passed
    assert not compare_logits(ref, cand, rtol=0.0).passed
    assert not compare_logits(ref / 66, cand / 66 + np.float32(2.7e-4)).passed  # small logits: same diff is real


def test_export_of_a_real_short_distill_student_passes_parity(finished_run: Path, tmp_path: Path) -> None:
    res = cli("export", finished_run, "--onnx", "--out", tmp_path / "exp")
    assert res.exit_code == 0, res.output
    parity = json.loads((tmp_path / "exp" / "export.json").read_text())["parity"]
    assert parity["passed"] and parity["top1_agreement"] == 1.0
    assert parity["tolerance"] == pytest.approx(parity["atol"] + parity["rtol"] * parity["logit_scale"])
    assert parity["logit_scale"] > 0 and parity["max_abs_diff"] <= parity["tolerance"]


def test_resume_on_changed_data_is_refused(tmp_path: Path, teacher_2: Path) -> None:
    from PIL import Image

    data = image_folder(tmp_path / "data")
    run = tmp_path / "run"
    args = ["distill", "--teacher", teacher_2, "--target", data, "--method", "kd", *TINY, "--out", run]
    assert cli(*args).exit_code == 0
    Image.new("RGB", (12, 12)).save(data / "b" / "0a.png")
    refused(cli(*args, "--resume"), "changed since training", "'b' 5 -> 6")
