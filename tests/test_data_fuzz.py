"""Fuzzing the image decoder and the folder scanner with byte-mutated image files (hypothesis).

Properties: no exception other than the decoder's own "bad image" escapes, a decoded image
always has the promised shape and type, and when a folder is loaded every file is either
used or named in one skipped-file warning. Bounded to a few seconds (example count, no
deadline per example, no example database written).
"""

from __future__ import annotations

import io
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from augkd_edge.data.folder import _BadImage, decode_image, load_image_folder
from augkd_edge.errors import BadImageWarning

FUZZ = settings(max_examples=150, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])


def _seed_files() -> list[tuple[str, bytes]]:
    """Small valid images in the formats users have: the mutations start from these."""
    from PIL import Image

    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8))
    seeds = []
    for fmt, image in (("PNG", rgb), ("JPEG", rgb), ("GIF", rgb.convert("P")), ("BMP", rgb),
                       ("TIFF", rgb), ("PNG", rgb.convert("RGBA")), ("PNG", rgb.convert("I;16")),
                       ("WEBP", rgb)):
        buf = io.BytesIO()
        image.save(buf, format=fmt)
        seeds.append((fmt.lower(), buf.getvalue()))
    return seeds


SEEDS = _seed_files()

mutated_files = st.builds(
    lambda seed, edits, cut: _mutate(SEEDS[seed][1], edits, cut),
    st.integers(0, len(SEEDS) - 1),
    st.lists(st.tuples(st.integers(0, 4095), st.integers(0, 255)), max_size=12),
    st.one_of(st.none(), st.integers(0, 4096)),
)


def _mutate(data: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    out = bytearray(data)
    for pos, value in edits:
        if out:
            out[pos % len(out)] = value
    return bytes(out if cut is None else out[:cut])


@FUZZ
@given(data=mutated_files)
def test_decoder_returns_an_image_or_says_why(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.img"
        path.write_bytes(data)
        try:
            pixels = decode_image(path, 16)
        except _BadImage as exc:
            assert str(exc)
        else:
            assert pixels.shape == (16, 16, 3) and pixels.dtype == np.uint8


@FUZZ
@given(files=st.lists(mutated_files, min_size=1, max_size=6))
def test_folder_scan_uses_or_names_every_file(files: list[bytes]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        names = []
        for label in ("a", "b"):
            (root / label).mkdir()
            (root / label / "good.png").write_bytes(SEEDS[0][1])  # every class keeps one readable image
            for i, data in enumerate(files):
                names.append(root / label / f"f{i}.{SEEDS[i % len(SEEDS)][0]}")
                names[-1].write_bytes(data)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            images, labels, classes, used = load_image_folder(root, 16, workers=1)
        messages = [str(w.message) for w in caught if issubclass(w.category, BadImageWarning)]
        skipped = [m for m in messages if m.startswith("skipped ")]
        assert classes == ["a", "b"] and images.shape == (len(used), 3, 16, 16) and len(labels) == len(used)
        assert len(used) + len(skipped) == len(names) + 2
        for path in names:
            assert str(path) in used or any(m.startswith(f"skipped {path}: ") for m in skipped), path
        assert all("\n" not in m for m in messages)


@pytest.mark.parametrize("fmt, data", SEEDS, ids=[f for f, _ in SEEDS])
def test_fuzz_seeds_are_valid_images(fmt: str, data: bytes, tmp_path: Path) -> None:
    """The mutations start from files that do decode (else the fuzz would only test garbage)."""
    path = tmp_path / f"seed.{fmt}"
    path.write_bytes(data)
    assert decode_image(path, 16).shape == (16, 16, 3)
