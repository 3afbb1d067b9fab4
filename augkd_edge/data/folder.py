"""Image-folder domains (Office-31, Office-Home, VisDA, your own photos).

Layout: ``root/<class>/<image>`` (files in sub-folders of a class folder count
for that class). Behaviour, also the README's table:

==================================  =================================================================
situation                           what happens
==================================  =================================================================
class order                         class folders sorted by name; labels index that list
image size                          resized to ``input_size`` x ``input_size`` (bilinear, antialiased;
                                    aspect not kept, as in the paper's 32x32 setting), held in memory
grayscale, 16-bit, CMYK, palette    converted to RGB in [0, 1] (16-bit scaled by 65535)
RGBA / LA / palette transparency    composited onto white (product photos have white backgrounds;
                                    dropping alpha would leave whatever colour hides under it)
EXIF orientation                    applied, so a phone photo is upright
hidden files / folders (``.x``)     ignored (``.DS_Store``, ``.ipynb_checkpoints``)
files directly in ``root``          ignored (a README next to the class folders is fine)
unreadable, truncated, non-image    ``on_bad_file="skip"`` (default): skipped, one warning per file
                                    naming it and why; ``"error"``: UserError naming the file
image over 2x Pillow's pixel limit  same as unreadable (Pillow's decompression-bomb error; the
                                    limit is ``PIL.Image.MAX_IMAGE_PIXELS``, about 89 MP; between 1x
                                    and 2x Pillow only warns and the image is used)
empty class folder                  UserError naming the folder (also when all its files were bad)
missing root, or no class folders   UserError naming the path
==================================  =================================================================

Decoding runs in a thread pool: Pillow releases the GIL while decoding and
resizing, and JPEG ``draft`` mode decodes big photos at a reduced scale.
"""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from augkd_edge.errors import BadImageWarning, UserError

if TYPE_CHECKING:
    from PIL import Image

BAD_FILE_POLICIES = ("skip", "error")


# After this many skipped files, a count closes the list of warnings.
SUMMARY_AFTER = 5


class _BadImage(Exception):
    """One file could not be turned into an image; the message says why."""


def _visible(entries: list[os.DirEntry]) -> list[os.DirEntry]:
    return sorted((e for e in entries if not e.name.startswith(".")), key=lambda e: e.name)


def _class_files(folder: Path, seen: set[tuple[int, int]] | None = None) -> list[Path]:
    """Visible files under one class folder, recursively, in a stable order.

    Links to folders are followed once: a link to a folder already read on this
    walk (a loop such as ``a/loop -> a``, or a second way to the same folder) is
    skipped with a BadImageWarning naming it.
    """
    if seen is None:
        st = os.stat(folder)
        seen = {(st.st_dev, st.st_ino)}
    files: list[Path] = []
    try:
        with os.scandir(folder) as it:
            entries = _visible(list(it))
    except OSError as exc:
        warnings.warn(f"skipped {folder}: cannot list this folder ({exc.strerror})", BadImageWarning, stacklevel=2)
        return files
    for entry in entries:
        try:
            is_dir, is_file = entry.is_dir(), entry.is_file()
        except OSError as exc:  # a link to itself: the OS refuses to resolve it
            warnings.warn(f"skipped link {entry.path}: {exc.strerror}", BadImageWarning, stacklevel=2)
            continue
        if is_dir:
            try:
                st = entry.stat()
            except OSError as exc:  # a link loop the OS refuses to resolve, a dangling path
                warnings.warn(f"skipped {entry.path}: {exc.strerror}", BadImageWarning, stacklevel=2)
                continue
            if (st.st_dev, st.st_ino) in seen:
                warnings.warn(f"skipped link {entry.path}: it leads to {os.path.realpath(entry.path)}, a folder "
                              f"already read (a link loop or a second path to the same images)", BadImageWarning,
                              stacklevel=2)
                continue
            seen.add((st.st_dev, st.st_ino))
            files.extend(_class_files(Path(entry.path), seen))
        elif is_file:
            files.append(Path(entry.path))
    return files


def scan_folder(root: Path) -> tuple[list[str], list[list[Path]]]:
    """Class names and each class's files; UserError for a missing root, no classes or an empty class."""
    if not root.exists():
        raise UserError(f"{root}: no such folder; give an existing ImageFolder root (root/<class>/<image>) "
                        f"or a built-in domain such as digits:mnist.")
    if not root.is_dir():
        raise UserError(f"{root}: is a file, not a folder; give the folder that holds one folder per class.")
    with os.scandir(root) as it:
        class_dirs = [Path(e.path) for e in _visible(list(it)) if e.is_dir()]
    if not class_dirs:
        raise UserError(f"{root}: has no class folders; expected the layout {root}/<class>/<image>.")
    files = [_class_files(d) for d in class_dirs]
    for folder, members in zip(class_dirs, files):
        if not members:
            raise UserError(f"{folder}: empty class folder; add images to it or remove it.")
    return [d.name for d in class_dirs], files


def _to_rgb(image: "Image.Image") -> "Image.Image":
    """Any Pillow mode -> 8-bit RGB, with transparency composited onto white."""
    from PIL import Image

    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float32)
        if image.mode == "F":
            scale = max(float(values.max()), 1.0)
        elif image.mode.startswith("I;16") or values.max() > 255:
            scale = 65535.0
        else:
            scale = 255.0
        gray = np.clip(values / scale * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def decode_image(path: Path, size: int) -> np.ndarray:
    """One file -> ``uint8 [size, size, 3]``; raises _BadImage with the reason."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.draft("RGB", (size * 2, size * 2))
            image.load()
            image = ImageOps.exif_transpose(image)
            rgb = _to_rgb(image).resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(rgb, dtype=np.uint8)
    except UnidentifiedImageError:
        raise _BadImage("not an image file Pillow can read") from None
    except Image.DecompressionBombError as exc:
        raise _BadImage(f"too large, refused by Pillow's decompression-bomb guard ({exc}); shrink the image") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise _BadImage(f"unreadable or truncated image ({exc})") from None


def _try_decode(job: tuple[Path, int]) -> np.ndarray | str:
    try:
        return decode_image(*job)
    except _BadImage as exc:
        return str(exc)


def decode_files(paths: list[Path], input_size: int, on_bad_file: str, root: Path,
                 workers: int | None = None) -> tuple[list[int], list[np.ndarray]]:
    """Decode ``paths`` in a thread pool: the indices of the readable ones and their pixels.

    Bad files follow ``on_bad_file`` ("skip": one BadImageWarning per file naming it and why, then a count;
    "error": UserError naming the file). Shared by labelled folders and unlabelled pools.
    """
    if on_bad_file not in BAD_FILE_POLICIES:
        raise UserError(f"on_bad_file must be one of {BAD_FILE_POLICIES}, got {on_bad_file!r}.")
    workers = workers or min(8, (os.cpu_count() or 1) + 2)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(_try_decode, [(path, input_size) for path in paths]))
    kept: list[int] = []
    for i, (path, result) in enumerate(zip(paths, results)):
        if isinstance(result, np.ndarray):
            kept.append(i)
        elif on_bad_file == "error":
            raise UserError(f"{path}: {result}; fix or remove the file, or let augkd-edge skip bad files (the default).")
        else:
            warnings.warn(f"skipped {path}: {result}", BadImageWarning, stacklevel=3)
    skipped = len(paths) - len(kept)
    if skipped > SUMMARY_AFTER:
        warnings.warn(f"{root}: skipped {skipped} of {len(paths)} files (listed above); using {len(kept)} images",
                      BadImageWarning, stacklevel=3)
    return kept, [results[i] for i in kept]  # type: ignore[misc]


def to_tensor(pixels: list[np.ndarray]) -> torch.Tensor:
    """``uint8 [S, S, 3]`` arrays -> float32 ``[N, 3, S, S]`` in [0, 1]."""
    return torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).float().div_(255.0)


def load_image_folder(
    root: str | os.PathLike, input_size: int, on_bad_file: str = "skip", workers: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, list[str], list[str]]:
    """Images ``[N, 3, S, S]`` in [0, 1], labels, class names and file paths of a folder domain."""
    if on_bad_file not in BAD_FILE_POLICIES:
        raise UserError(f"on_bad_file must be one of {BAD_FILE_POLICIES}, got {on_bad_file!r}.")
    root = Path(root)
    classes, per_class = scan_folder(root)
    jobs = [(path, label) for label, paths in enumerate(per_class) for path in paths]
    kept, pixels = decode_files([path for path, _ in jobs], input_size, on_bad_file, root, workers)
    labels = np.array([jobs[i][1] for i in kept], dtype=np.int64)
    for label, name in enumerate(classes):
        if not (labels == label).any():
            raise UserError(f"{root / name}: no readable images in this class folder; fix or remove it.")
    return to_tensor(pixels), torch.from_numpy(labels), classes, [str(jobs[i][0]) for i in kept]


def load_unlabelled_folder(root: str | os.PathLike, input_size: int,
                           on_bad_file: str = "skip") -> tuple[torch.Tensor, list[str]]:
    """Every readable image under ``root`` (nested folders allowed, folder names ignored) and its path.

    The same decoding and bad-file rules as a labelled folder; UserError for a missing root or no readable image.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: no such folder; give --unlabelled a folder of images (sub-folders allowed) "
                        f"or the --target spec itself for its held-out pool.")
    paths = _class_files(root)
    kept, pixels = decode_files(paths, input_size, on_bad_file, root)
    if not kept:
        raise UserError(f"{root}: no readable images in this folder ({len(paths)} files); add images or fix the path.")
    return to_tensor(pixels), [str(paths[i]) for i in kept]
