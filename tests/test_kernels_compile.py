"""Every fused kernel compiles for Hopper (sm_90: H100/H200) with Triton's real compiler, without spills.

The interpreter (test_kernels.py) proves the kernels compute the right numbers
but runs them as numpy, so it cannot catch what only the compiler sees: type
errors in constexpr branches, unsupported constants, register spills from tiles
that are too large. Triton lowers to PTX and assembles a cubin with its bundled
ptxas without a GPU, so CI can check that much; ``ptxas -v`` then reports
registers and spills for the block sizes the launch code really picks.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import subprocess
from typing import Any

import pytest

triton = pytest.importorskip("triton", reason="triton is not installed")

from augkd_edge.kernels import dispatch  # noqa: E402
from augkd_edge.kernels.dispatch import NUM_WARPS, tile  # noqa: E402

FLOAT_SCALARS = {"f", "tau", "u_value", "grad_scale"}
FP32_POINTERS = {"lse_ptr", "energy_ptr", "loss_ptr", "mean_ptr", "std_ptr", "u_ptr"}
PTXAS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")

pytestmark = pytest.mark.skipif(
    not os.path.exists(PTXAS), reason="this triton build has no NVIDIA backend (no bundled ptxas)"
)


def _kernels(op: str) -> Any:
    if dispatch._stdlib_interpreted():
        pytest.skip("triton was imported in interpreter mode in this process")
    return importlib.import_module(f"augkd_edge.kernels.{op}")._kernels()


def _compile_for_sm90(jit: Any, dtype: str, constexprs: dict[str, Any], tmp_path: Any) -> str:
    """Compile to a cubin for sm_90 and return ``ptxas -v``'s resource report."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature = {}
    for name in inspect.signature(jit.fn).parameters:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name == "y_ptr":
            signature[name] = "*i64"
        elif name in FP32_POINTERS:
            signature[name] = "*fp32"
        elif name.endswith("_ptr"):
            signature[name] = f"*{dtype}"
        else:
            signature[name] = "fp32" if name in FLOAT_SCALARS else "i32"
    compiled = triton.compile(
        ASTSource(jit, signature, constexprs=constexprs), target=GPUTarget("cuda", 90, 32), options={"num_warps": NUM_WARPS}
    )
    assert compiled.asm.get("cubin"), "no cubin produced"
    ptx = tmp_path / "kernel.ptx"
    ptx.write_text(compiled.asm["ptx"])
    proc = subprocess.run([PTXAS, "-v", "--gpu-name", "sm_90a", str(ptx), "-o", os.devnull],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


def _assert_no_spills(report: str) -> None:
    spills = [int(n) for n in re.findall(r"(\d+) bytes spill (?:stores|loads)", report)]
    assert spills and not any(spills), report


def _blocks(rows: int, cols: int, **kw: int) -> dict[str, int]:
    block_r, block_c = tile(rows, cols, **kw)
    return {"BLOCK_R": block_r, "BLOCK_C": block_c}


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_latent_mix_compiles(dtype: str, tmp_path: Any) -> None:
    forward, backward = _kernels("latent_mix")
    blocks = _blocks(2048, 100, max_cols=256)
    _assert_no_spills(_compile_for_sm90(forward, dtype, blocks, tmp_path))
    flags = {"HAS_GA": dtype == "fp32", "HAS_GM": True, "NEED_DZ": True, "NEED_DPSI": True, "NEED_DM": dtype == "fp32"}
    _assert_no_spills(_compile_for_sm90(backward, dtype, blocks | flags, tmp_path))


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_mix_normalize_compiles(dtype: str, tmp_path: Any) -> None:
    _assert_no_spills(_compile_for_sm90(_kernels("mix_normalize"), dtype, _blocks(2048 * 3, 32 * 32), tmp_path))


@pytest.mark.parametrize("dtype,classes", [("fp32", 31), ("bf16", 3000)])
def test_energy_compiles(dtype: str, classes: int, tmp_path: Any) -> None:
    forward, backward = _kernels("energy")
    blocks = _blocks(2048, classes, elements=2048)
    blocks["N_CHUNKS"] = -(-classes // blocks["BLOCK_C"])
    for kernel in (forward, backward):
        _assert_no_spills(_compile_for_sm90(kernel, dtype, blocks, tmp_path))


@pytest.mark.parametrize(
    "dtype,classes,per_row_u,grad",
    [("fp32", 31, False, True), ("bf16", 3000, True, True), ("fp16", 65, True, False)],
)
def test_distill_loss_compiles(dtype: str, classes: int, per_row_u: bool, grad: bool, tmp_path: Any) -> None:
    blocks = _blocks(2048, classes, elements=2048)
    constexprs = blocks | {
        "N_CHUNKS": -(-classes // blocks["BLOCK_C"]), "U_PER_ROW": per_row_u, "COMPUTE_GRAD": grad,
    }
    _assert_no_spills(_compile_for_sm90(_kernels("distill_loss"), dtype, constexprs, tmp_path))
