"""The fused Triton kernels equal their PyTorch references (forward and gradients).

On CPU the kernels run under Triton's interpreter. Triton fixes the mode of its
standard library (tl.sum, tl.max, ...) when triton is first imported, so
``TRITON_INTERPRET=1`` must be in the environment before that import, and
setting it for the whole pytest process would turn other files' GPU Triton code
(torch.compile) into interpreted code. Hence: in a normal run the CPU cases are
skipped in-process and ``test_interpreter_run_in_subprocess`` reruns
them in a child pytest with ``TRITON_INTERPRET=1`` (what
``TRITON_INTERPRET=1 pytest tests/test_kernels.py`` also does directly). With a
CUDA device the same cases also run the compiled kernels in-process.

Tolerances: fp32 results are compared at rtol 1e-5 (the kernels accumulate in a
different order than PyTorch; logits of 1e4 get rtol 1e-4 because logsumexp's
fp32 ulp at 1e4 is 1e-3; gradients 10x the forward's); bf16 outputs at 2 bf16
ulps (rtol 1.6e-2), since both paths compute in fp32 and round once or twice.
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys

import pytest
import torch

from augkd_edge.errors import UserError
from augkd_edge.kernels import backend, current_backend, distill_loss, energy_score, latent_mix, mix_normalize, set_backend
from augkd_edge.kernels import dispatch
from augkd_edge.kernels.distill_loss import distill_loss_reference

torch.set_num_threads(2)

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]),
]


def _interpreter_in_process() -> bool:
    """True when this process imported triton with TRITON_INTERPRET=1 (e.g. the child run)."""
    return os.environ.get("TRITON_INTERPRET") == "1" and dispatch.triton_available() and dispatch._stdlib_interpreted()


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """A device on which the Triton kernels can run: CPU through the interpreter, or a GPU compiled."""
    pytest.importorskip("triton", reason="triton is not installed")
    if request.param == "cpu" and not _interpreter_in_process():
        pytest.skip("CPU kernel cases run in the TRITON_INTERPRET=1 subprocess (test_interpreter_run_in_subprocess)")
    if request.param == "cuda" and dispatch._stdlib_interpreted():
        pytest.skip("triton was imported in interpreter mode; GPU cases need a run without TRITON_INTERPRET")
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    set_backend(None)
    return request.param


def test_interpreter_run_in_subprocess() -> None:
    """Run every CPU kernel case of this file in a child pytest that imports triton interpreted."""
    pytest.importorskip("triton", reason="triton is not installed")
    if _interpreter_in_process():
        pytest.skip("this process already runs the CPU cases under the interpreter")
    env = {k: v for k, v in os.environ.items() if k != dispatch.ENV_VAR}
    env["TRITON_INTERPRET"] = "1"
    cmd = [sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider", "-k", "cpu", "-W", "error::RuntimeWarning"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
    assert proc.returncode == 0, tail
    summary = re.search(r"(\d+) passed", tail)
    assert summary and int(summary.group(1)) >= 100, f"too few interpreter cases ran:\n{tail}"
    assert "skipped" not in tail.splitlines()[-1], tail


@pytest.fixture(autouse=True)
def _seeded() -> None:
    """Every case sees the same data on every run: accuracy comparisons must not be flaky."""
    torch.manual_seed(0)


def _leaves(tensors: list[torch.Tensor], grad: list[bool]) -> list[torch.Tensor]:
    return [t.detach().clone().requires_grad_(g) for t, g in zip(tensors, grad)]


def _both(op, tensors: list[torch.Tensor], grad: list[bool], *args, **kwargs):
    """Run ``op`` on fresh copies of ``tensors`` under each backend; backprop a random weighting of the outputs."""
    results = {}
    for name in ("triton", "reference"):
        gen = torch.Generator().manual_seed(0)  # the same output weights for both backends
        leaves = _leaves(tensors, grad)
        with backend(name):
            out = op(*leaves, *args, **kwargs)
        outs = out if isinstance(out, tuple) else (out,)
        if any(grad):
            weights = [torch.rand(o.shape, generator=gen).to(o.device) for o in outs]
            sum((o.float() * w).sum() for o, w in zip(outs, weights)).backward()
        results[name] = (outs, [t.grad for t in leaves])
    return results["triton"], results["reference"]


def _close(actual: torch.Tensor, expected: torch.Tensor, rtol: float) -> None:
    """Elementwise rtol plus an absolute floor of rtol * max|expected| (sums of mixed-sign terms)."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    scale = expected.float().abs().max().item() if expected.numel() else 0.0
    torch.testing.assert_close(actual.float(), expected.float(), rtol=rtol, atol=rtol * max(scale, 1e-6))


# ---------------------------------------------------------------- latent_mix
@pytest.mark.parametrize("shape", [(1, 1), (37, 100), (300, 7)])
@pytest.mark.parametrize("mask", ["full", "row", "column"])
@pytest.mark.parametrize("f", [0.0, 0.3, 1.0])
def test_latent_mix_matches_reference(device: str, shape: tuple[int, int], mask: str, f: float) -> None:
    b, l = shape
    m_shape = {"full": (b, l), "row": (l,), "column": (b, 1)}[mask]
    z, psi = torch.randn(b, l, device=device), torch.randn(b, l, device=device)
    m = torch.rand(m_shape, device=device)
    (fused, fused_grads), (ref, ref_grads) = _both(latent_mix, [z, psi, m], [True, True, True], f)
    for a, e in zip(fused + tuple(fused_grads), ref + tuple(ref_grads)):
        _close(a, e, 1e-5)


@pytest.mark.parametrize("used", ["z_a", "z_m"])
def test_latent_mix_one_output_used(device: str, used: str) -> None:
    """Module 2 backprops z_a only, so the other output's gradient arrives as None."""
    z, psi, m = (torch.randn(33, 100, device=device) for _ in range(3))
    grads = {}
    for name in ("triton", "reference"):
        leaves = _leaves([z, psi, m], [True, True, True])
        with backend(name):
            z_a, z_m = latent_mix(*leaves, 0.4)
        (z_a if used == "z_a" else z_m).pow(2).sum().backward()
        grads[name] = [t.grad for t in leaves]
    for a, e in zip(grads["triton"], grads["reference"]):
        _close(a, e, 1e-5)


def test_latent_mix_bf16_and_partial_grads(device: str) -> None:
    z = torch.randn(65, 100, device=device, dtype=torch.bfloat16)
    psi = torch.randn(65, 100, device=device, dtype=torch.bfloat16)
    m = torch.rand(65, 100, device=device, dtype=torch.bfloat16)
    (fused, fused_grads), (ref, ref_grads) = _both(latent_mix, [z, psi, m], [False, True, True], 0.25)
    assert fused[0].dtype == torch.bfloat16 and fused_grads[0] is None
    for a, e in zip(fused + tuple(fused_grads[1:]), ref + tuple(ref_grads[1:])):
        _close(a, e, 1.6e-2)


# ---------------------------------------------------------------- mix_normalize
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.mark.parametrize("shape", [(1, 3, 1, 1), (5, 3, 7, 9), (3, 3, 32, 32), (2, 1, 3, 300)])
@pytest.mark.parametrize("f", [0.0, 0.37, 1.0])
def test_mix_normalize_matches_reference(device: str, shape: tuple[int, ...], f: float) -> None:
    x, g = torch.rand(shape, device=device), torch.rand(shape, device=device)
    channels = shape[1]
    mean, std = MEAN[:channels], STD[:channels]
    with torch.no_grad():
        with backend("triton"):
            fused = mix_normalize(x, g, f, mean, std)
        with backend("reference"):
            ref = mix_normalize(x, g, f, torch.tensor(mean), torch.tensor(std))
    _close(fused, ref, 1e-5)
    # the definition, spelled out with torch.cat: one normalisation path for both halves
    m4, s4 = torch.tensor(mean, device=device).view(1, -1, 1, 1), torch.tensor(std, device=device).view(1, -1, 1, 1)
    expected = torch.cat([(x - m4) / s4, ((1 - f) * g + f * x - m4) / s4])
    _close(fused, expected, 1e-5)


def test_mix_normalize_into_buffer_bf16_and_noncontiguous(device: str) -> None:
    x = torch.rand(4, 32, 32, 3, device=device, dtype=torch.bfloat16).permute(0, 3, 1, 2)  # channels-last view
    g = torch.rand(4, 3, 32, 32, device=device, dtype=torch.bfloat16)
    outs = {}
    for name in ("triton", "reference"):
        buf = torch.full((8, 3, 32, 32), float("nan"), device=device, dtype=torch.bfloat16)
        with torch.no_grad(), backend(name):
            result = mix_normalize(x, g, 0.6, MEAN, STD, out=buf)
        assert result.data_ptr() == buf.data_ptr()
        outs[name] = result
    _close(outs["triton"], outs["reference"], 1.6e-2)


def test_mix_normalize_refuses_to_cut_the_graph() -> None:
    x = torch.rand(2, 3, 4, 4, requires_grad=True)
    g = torch.rand(2, 3, 4, 4)
    with pytest.raises(RuntimeError, match="not differentiable.*no_grad"):
        mix_normalize(x, g, 0.5, MEAN, STD)
    with torch.no_grad():
        assert mix_normalize(x, g, 0.5, MEAN, STD).shape == (4, 3, 4, 4)
    with pytest.raises(ValueError, match="2 values but the images have 3 channels"):
        mix_normalize(x.detach(), g, 0.5, MEAN[:2], STD[:2])
    with pytest.raises(ValueError, match="out must be a contiguous"):
        mix_normalize(x.detach(), g, 0.5, MEAN, STD, out=torch.empty(2, 3, 4, 4))


# ---------------------------------------------------------------- energy_score
@pytest.mark.parametrize("shape", [(1, 1), (5, 1), (300, 31), (7, 3000)])
@pytest.mark.parametrize("scale", [1.0, 1e4])
@pytest.mark.parametrize("tau", [1.0, 2.5])
def test_energy_matches_reference(device: str, shape: tuple[int, int], scale: float, tau: float) -> None:
    logits = torch.randn(shape, device=device) * scale
    (fused, fused_grads), (ref, ref_grads) = _both(energy_score, [logits], [True], tau)
    rtol = 1e-4 if scale > 1 else 1e-5
    assert fused[0].dtype == torch.float32 and torch.isfinite(fused[0]).all()
    _close(fused[0], ref[0], rtol)
    _close(fused_grads[0], ref_grads[0], 10 * rtol)


def test_energy_bf16_accumulates_in_fp32(device: str) -> None:
    logits = (torch.randn(129, 1000, device=device) * 20).to(torch.bfloat16)
    (fused, fused_grads), (ref, ref_grads) = _both(energy_score, [logits], [True], 1.0)
    assert fused[0].dtype == torch.float32 and fused_grads[0].dtype == torch.bfloat16
    _close(fused[0], ref[0], 1e-5)
    _close(fused_grads[0], ref_grads[0], 1.6e-2)


# ---------------------------------------------------------------- distill_loss
U_CASES = ["0", "1", "0.5", "per-sample"]


def _u(kind: str, n: int, device: str) -> float | torch.Tensor:
    return torch.rand(n, device=device) if kind == "per-sample" else float(kind)


@pytest.mark.parametrize("shape,scale", [((1, 1), 1.0), ((300, 31), 1.0), ((7, 3000), 1.0), ((9, 17), 1e4)])
@pytest.mark.parametrize("u_kind", U_CASES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_distill_loss_matches_reference(device: str, shape: tuple[int, int], scale: float, u_kind: str, reduction: str) -> None:
    b, k = shape
    s, t = torch.randn(b, k, device=device) * scale, torch.randn(b, k, device=device) * scale
    y = torch.randint(0, k, (b,), device=device)
    u = _u(u_kind, b, device)
    (fused, fused_grads), (ref, ref_grads) = _both(
        lambda s_, t_: distill_loss(s_, t_, y, u, 10.0, reduction), [s, t], [True, False]
    )
    rtol = 1e-4 if scale > 1 else 1e-5
    assert fused[0].dtype == torch.float32 and fused_grads[1] is None
    _close(fused_grads[0], ref_grads[0], 10 * rtol)
    # The loss is a difference of logsumexps (KL small next to lse ~ log K), so fp32 answers
    # differ by a few ulps of lse x tau^2. Judge both per sample against the fp64 definition:
    # the fused kernel must be as accurate as PyTorch's own fp32 path.
    exact = _distill_fp64(s, t, y, u, 10.0, "none")
    with backend("triton"):
        per_sample = distill_loss(s, t, y, u, 10.0, "none")
    fused_err = (per_sample.double() - exact).abs().max().item()
    ref_err = (distill_loss_reference(s, t, y, u, 10.0, "none").double() - exact).abs().max().item()
    assert fused_err <= 2 * ref_err + 1e-6 * exact.abs().max().item(), (fused_err, ref_err)
    reduced = {"mean": per_sample.mean, "sum": per_sample.sum, "none": lambda: per_sample}[reduction]()
    _close(fused[0].detach(), reduced, 1e-6)


def _distill_fp64(s, t, y, u, tau: float, reduction: str) -> torch.Tensor:
    """The loss written from its definition (CE + tau^2 KL(p_t || p_s)) in float64."""
    s, t = s.double(), t.double()
    u = u.double() if isinstance(u, torch.Tensor) else u
    log_p_t, log_p_s = torch.log_softmax(t / tau, 1), torch.log_softmax(s / tau, 1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(1)
    ce = -torch.log_softmax(s, 1).gather(1, y[:, None])[:, 0]
    per_sample = u * ce + (1 - u) * tau**2 * kl
    return {"mean": per_sample.mean, "sum": per_sample.sum, "none": lambda: per_sample}[reduction]()


def test_distill_loss_definition_and_batchmean(device: str) -> None:
    """Against the formula written with KLDivLoss(batchmean) and CE, at tau = 1 and 4."""
    s, t = torch.randn(50, 65, device=device), torch.randn(50, 65, device=device)
    y = torch.randint(0, 65, (50,), device=device)
    for tau in (1.0, 4.0):
        kd = torch.nn.KLDivLoss(reduction="batchmean")(torch.log_softmax(s / tau, 1), torch.softmax(t / tau, 1))
        expected = 0.3 * torch.nn.functional.cross_entropy(s, y) + 0.7 * tau**2 * kd
        with backend("triton"):
            _close(distill_loss(s, t, y, 0.3, tau), expected, 1e-5)


def test_distill_loss_bf16_noncontiguous_and_teacher_grad(device: str) -> None:
    wide = torch.randn(130, 40, device=device, dtype=torch.bfloat16) * 5
    t_leaf = wide[:, 5:36].detach().clone().requires_grad_()
    y = torch.randint(0, 31, (130,), device=device)
    (fused, fused_grads), (ref, ref_grads) = _both(
        lambda w: distill_loss(w[:, :31], t_leaf, y, 0.5, 10.0), [wide], [True]  # row stride 40, not 31
    )
    assert t_leaf.grad is None, "the teacher is a constant"
    _close(fused[0], ref[0], 1e-5)
    _close(fused_grads[0], ref_grads[0], 1.6e-2)


def test_distill_loss_no_grad_and_bad_label(device: str) -> None:
    s, t = torch.randn(20, 12, device=device), torch.randn(20, 12, device=device)
    y = torch.randint(0, 12, (20,), device=device)
    with torch.no_grad(), backend("triton"):
        fused = distill_loss(s.requires_grad_(), t, y, 0.5, 10.0, "none")
    assert not fused.requires_grad
    with backend("reference"):
        _close(fused, distill_loss(s, t, y, 0.5, 10.0, "none").detach(), 1e-5)
    y[3] = 12  # out of range: NaN for that sample rather than a read past the row
    with torch.no_grad(), backend("triton"):
        bad = distill_loss(s, t, y, 0.5, 10.0, "none")
    assert torch.isnan(bad[3]) and torch.isfinite(bad[torch.arange(20, device=device) != 3]).all()


# ---------------------------------------------------------------- dispatcher
def test_auto_uses_reference_for_cpu_tensors(monkeypatch: pytest.MonkeyPatch) -> None:
    dl_module = importlib.import_module("augkd_edge.kernels.distill_loss")  # the package attribute is the function
    energy_module = importlib.import_module("augkd_edge.kernels.energy")

    def boom():
        raise AssertionError("a Triton kernel was built for CPU tensors in auto mode")

    monkeypatch.setattr(energy_module, "_kernels", boom)
    monkeypatch.setattr(dl_module, "_kernels", boom)
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # even with the interpreter on, auto stays on the reference
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    set_backend(None)
    x = torch.randn(4, 5, requires_grad=True)
    assert current_backend() == "auto" and not dispatch.use_triton(x)
    energy_score(x).sum().backward()
    distill_loss(x, torch.randn(4, 5), torch.tensor([0, 1, 2, 3]), 0.5, 2.0).backward()


def test_env_var_is_read_at_call_time_and_overridden_by_set_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    set_backend(None)
    monkeypatch.setenv(dispatch.ENV_VAR, "reference")
    assert current_backend() == "reference"
    monkeypatch.setenv(dispatch.ENV_VAR, "Triton ")
    assert current_backend() == "triton"
    with backend("reference"):
        assert current_backend() == "reference"
        with backend("auto"):
            assert current_backend() == "auto"
        assert current_backend() == "reference"
    assert current_backend() == "triton"
    set_backend("reference")
    try:
        assert current_backend() == "reference"
    finally:
        set_backend(None)
    monkeypatch.setenv(dispatch.ENV_VAR, "cuda")
    with pytest.raises(UserError, match="AUGKD_KERNELS='cuda' is not valid.*auto, triton, reference"):
        current_backend()
    with pytest.raises(ValueError, match="unknown kernel backend"):
        set_backend("fast")


def test_forcing_triton_on_cpu_without_interpreter_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("triton", reason="triton is not installed")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setenv(dispatch.ENV_VAR, "triton")
    set_backend(None)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        energy_score(torch.randn(3, 4))


def test_import_and_reference_path_work_without_triton() -> None:
    """``import augkd_edge.kernels`` must not import triton (absent on CPU wheels / Jetson)."""
    code = (
        "import sys; import augkd_edge.kernels as k; assert 'triton' not in sys.modules, 'eager triton import';"
        "sys.modules['triton'] = None;"  # from here on `import triton` raises ImportError
        "import torch; x = torch.randn(3, 5);"
        "e = k.energy_score(x); assert torch.allclose(e, -torch.logsumexp(x, 1));"
        "print(k.distill_loss(x, x.flip(0), torch.tensor([0, 1, 4]), 0.5, 3.0).item())"
    )
    env = {key: v for key, v in os.environ.items() if key != dispatch.ENV_VAR}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert float(proc.stdout) > 0


def test_bad_arguments_are_refused_before_any_kernel() -> None:
    z = torch.randn(4, 10)
    with pytest.raises(ValueError, match="must broadcast to"):
        latent_mix(z, z, torch.rand(3, 10), 0.5)
    with pytest.raises(ValueError, match="same shape"):
        latent_mix(z, z[:, :9], torch.rand(10), 0.5)
    with pytest.raises(ValueError, match="tau must be > 0"):
        energy_score(z, 0.0)
    y = torch.tensor([0, 1, 2, 3])
    with pytest.raises(ValueError, match="reduction must be one of"):
        distill_loss(z, z, y, 0.5, 2.0, "batchmean")
    with pytest.raises(ValueError, match="integer class targets"):
        distill_loss(z, z, y.float(), 0.5, 2.0)
    with pytest.raises(ValueError, match="u must be a float or have 1 or 4 elements"):
        distill_loss(z, z, y, torch.rand(3), 2.0)
