"""The built wheel installs kernels/ and export/ under the augkd_edge namespace.

Both folder names exist on PyPI as other projects; a regression in the
package-dir mapping would install them as top-level packages (or not at all),
which an editable install in the source tree would hide. So: build a real
wheel, install it into a fresh venv, import from outside the checkout.
"""

from __future__ import annotations

import os
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        check=True,
        cwd=out,
    )
    (whl,) = out.glob("augkd_edge-*.whl")
    return whl


def test_wheel_contains_namespaced_leaf_packages(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert "augkd_edge/kernels/__init__.py" in names
    assert "augkd_edge/export/__init__.py" in names
    assert not any(n.startswith(("kernels/", "export/")) for n in names), "leaf packages leaked to top level"
    entry_points = [n for n in names if n.endswith("entry_points.txt")]
    assert entry_points and "augkd-edge = augkd_edge.cli:main" in zipfile.ZipFile(wheel).read(entry_points[0]).decode()


def test_wheel_installs_into_fresh_venv(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    purelib = Path(
        subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                       check=True, capture_output=True, text=True).stdout.strip()
    )
    # Install the wheel itself (not its dependencies, which are heavy and already here).
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "-q", "--target", str(purelib), str(wheel)],
        check=True,
    )
    # Dependencies come from the current environment, after the fresh venv's own site-packages.
    deps = [p for p in site.getsitepackages() + [sysconfig.get_paths()["purelib"]] if os.path.isdir(p)]
    (purelib / "zz_deps.pth").write_text("\n".join(dict.fromkeys(deps)) + "\n")
    code = (
        "import augkd_edge, augkd_edge.kernels, augkd_edge.export, augkd_edge.cli;"
        "print(augkd_edge.__file__); print(augkd_edge.kernels.__file__); print(augkd_edge.export.__file__)"
    )
    out = subprocess.run([str(py), "-c", code], check=True, capture_output=True, text=True, cwd=tmp_path,
                         env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"}).stdout.split()
    for path in out:
        assert Path(path).is_relative_to(purelib), f"{path} not imported from the installed wheel"
    assert out[1].endswith("augkd_edge/kernels/__init__.py")
    assert out[2].endswith("augkd_edge/export/__init__.py")


def test_import_is_torch_free() -> None:
    code = "import sys, augkd_edge, augkd_edge.export, augkd_edge.errors; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.strip()
    assert out == "False"
