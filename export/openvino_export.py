"""``export --openvino``: the checked ONNX as OpenVINO IR files, each checked before it is called done (issue 22).

Apart from ``openvino.py`` (conversion and the runner, which a deployment box without PyTorch runs) because this
step needs PyTorch and the parity code, which needs the runners.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from augkd_edge.errors import ExportCheckFailed
from augkd_edge.export.openvino import OpenVinoRunner, convert_to_ir, import_openvino

#: FP16 weights move logits legitimately: the IR is compared with PyTorch by decisions, as TensorRT's FP16 engine
FP16_MIN_AGREEMENT = 0.99


def quantize_nncf(fp32_xml: Path, xml_path: Path, calibration_images: np.ndarray) -> Path | None:
    """NNCF post-training quantization of the FP32 IR on ``calibration_images`` (the student domain's training
    split, as for the ONNX INT8 model); None when NNCF is not installed (it is optional even within the extra)."""
    try:
        import nncf
    except ImportError:
        return None
    ov = import_openvino()
    model = ov.Core().read_model(str(fp32_xml))
    data = nncf.Dataset([calibration_images[i:i + 1] for i in range(len(calibration_images))])
    ov.save_model(nncf.quantize(model, data, subset_size=len(calibration_images)), str(xml_path))
    return xml_path


def _keep(job: Any, xml: Path, precision: str) -> None:
    from augkd_edge.export.tensorrt import file_entry

    job.record["files"].update({p.name: file_entry(p, precision) for p in (xml, xml.with_suffix(".bin"))})


def export_ir(job: Any, onnx_path: Path, int8_path: Path | None) -> None:
    """The step (``job``: ``export.api``'s shared state). FP32 and FP16 (compressed weights) IR converted from the
    checked ONNX, each compared with PyTorch on the check split: FP32 within the ONNX tolerances, FP16 by
    decisions; then with ``--int8`` the INT8 IR (:func:`_int8_ir`)."""
    from augkd_edge.export.parity import compare_runners
    from augkd_edge.export.runtimes import TorchRunner

    opt, section = job.options, {}
    job.record["openvino"] = section
    for precision, atol, rtol in (("fp32", opt.atol, opt.rtol), ("fp16", float("inf"), 0.0)):
        xml = convert_to_ir(onnx_path, job.out / f"student.{precision}.xml", precision)
        with TorchRunner(job.model) as ref, OpenVinoRunner(xml, threads=opt.threads) as cand:
            parity = compare_runners(ref, cand, job.student.check_images, atol=atol, rtol=rtol,
                                     fixed_batch=opt.batch,
                                     min_agreement=opt.min_agreement if precision == "fp32" else FP16_MIN_AGREEMENT)
        section[precision] = {"xml": xml.name, "parity": {"split": job.student.split, **parity.to_dict()}}
        _keep(job, xml, precision)
        job.echo(f"OpenVINO {precision} IR {xml.name}: {parity.summary()}")
        if not parity.passed:
            raise ExportCheckFailed(f"{xml}: OpenVINO disagrees with PyTorch: {parity.summary()}; do not deploy it.")
    if int8_path is not None:
        _int8_ir(job, int8_path)


def _int8_ir(job: Any, int8_path: Path) -> None:
    """Two INT8 candidates under export's INT8 gate: the QDQ model as OpenVINO reads it (FakeQuantize) and NNCF's
    quantization of the FP32 IR on the same calibration images. The faster at batch 1 of those that pass becomes
    ``student.int8.xml`` (the issue: measure both, keep the faster that passes); both are recorded."""
    from augkd_edge.export.latency import batched_logits, top1_accuracy
    from augkd_edge.export.quantize import calibration_subset, int8_gate
    from augkd_edge.export.speedup import interleaved_medians

    opt, x, y = job.options, job.student.check_images, job.student.check_labels
    calib = calibration_subset(job.student.calibration_images(), opt.calibration_size)
    made = {"qdq": convert_to_ir(int8_path, job.out / "student.int8-qdq.xml"),
            "nncf": quantize_nncf(job.out / "student.fp32.xml", job.out / "student.int8-nncf.xml", calib)}
    candidates: dict[str, dict[str, Any]] = {n: {"made": False, "why": "nncf is not installed (pip install nncf)"}
                                             for n, xml in made.items() if xml is None}
    runners = {n: OpenVinoRunner(xml, threads=opt.threads) for n, xml in made.items() if xml is not None}
    try:
        for name, runner in runners.items():
            acc8 = top1_accuracy(batched_logits(runner.infer, x, fixed_batch=opt.batch), y)
            candidates[name] = {"made": True, **int8_gate(job.record["int8"]["fp32_top1"], acc8, opt.max_drop,
                                                          opt.force)}
        passing = {n: r for n, r in runners.items() if candidates[n]["accepted"] or opt.force}
        if passing:
            ms = interleaved_medians(passing, np.ascontiguousarray(x[:opt.batch or 1]), rounds=10, calls=10,
                                     warmup=10)
            for name, value in ms.items():
                candidates[name]["batch1_median_ms_here"] = value
    finally:
        for runner in runners.values():
            runner.close()
    section = job.record["openvino"]["int8"] = {"candidates": candidates, "calibration_images": int(len(calib))}
    if not passing:
        drops = ", ".join(f"{n} {c['drop_points']:.2f}" for n, c in candidates.items() if c["made"])
        raise ExportCheckFailed(f"{job.out}: every OpenVINO INT8 candidate loses more than --max-drop "
                                f"{opt.max_drop:g} top-1 points ({drops}); do not deploy them.")
    chosen = min(passing, key=lambda n: candidates[n]["batch1_median_ms_here"])
    final = job.out / "student.int8.xml"
    for name, xml in made.items():
        for path in ([] if xml is None else [xml, xml.with_suffix(".bin")]):
            if name == chosen:
                path.replace(final.with_suffix(path.suffix))
            else:
                path.unlink()
    kept = ("fp32_top1", "int8_top1", "drop_points", "accepted", "forced")
    section.update({"xml": final.name, "chosen": chosen, **{k: candidates[chosen][k] for k in kept}})
    _keep(job, final, "int8")
    job.echo(f"OpenVINO int8 IR {final.name}: {chosen} (test top-1 {100 * candidates[chosen]['int8_top1']:.2f}%, "
             f"drop {candidates[chosen]['drop_points']:.2f} points; the faster passing candidate here)")
