"""Built-in digits written as the PNG class folders a user would hand to ``--target`` (issue 20).

The accuracy suite's folder settings read these back through the real
ImageFolder loader (``augkd_edge.data.folder``), so they measure the path a user
takes: Pillow decoding, RGB conversion, a plain bilinear resize to the input
size, and the "natural" kind's augmentation, instead of the built-in digits'
crop-to-ink preprocessing. The images are the source's own
(``augkd_edge.data.digits.natural_images``): MNIST-M at 28x28 in colour,
optdigits at its 8x8 grid, inverted or not.

    python benchmarks/digit_folders.py optdigits-inverted /tmp/optinv     # write one folder

A folder is written once: ``FOLDER/.complete`` records the source and the image
count, and a folder holding it for the same source is reused as it is.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from augkd_edge.data.digits import DIGIT_CLASSES, natural_images

MARKER = ".complete"


def write_digit_folder(name: str, root: str | Path) -> Path:
    """``root/<class>/<index>.png`` for every image of built-in source ``name``; ``root``."""
    from PIL import Image

    root = Path(root)
    marker = root / MARKER
    if marker.is_file() and json.loads(marker.read_text()).get("source") == name:
        return root
    images, labels = natural_images(name)
    for cls in DIGIT_CLASSES:
        (root / cls).mkdir(parents=True, exist_ok=True)
    for i, (image, label) in enumerate(zip(images, labels)):
        pixels = image[..., 0] if image.shape[-1] == 1 else image
        Image.fromarray(pixels).save(root / DIGIT_CLASSES[int(label)] / f"{i:05d}.png")
    # the hidden marker is ignored by the folder scanner (hidden files are skipped)
    marker.write_text(json.dumps({"source": name, "images": int(len(labels)),
                                  "size": list(images.shape[1:])}) + "\n")
    return root


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python benchmarks/digit_folders.py SOURCE FOLDER  (SOURCE: mnist, mnist-m, optdigits, "
                 "optdigits-inverted)")
    print(write_digit_folder(sys.argv[1], sys.argv[2]))
