"""Train a BatchNorm-free toy student through the real engine and StudentStage; save the final weights.

Run with ``python`` (one process) and with ``torchrun --nproc-per-node 2`` (gloo):
tests/test_distributed.py checks the two give the same weights, i.e. that the
batch shares, their loss weights and DDP's gradient average reproduce the
single-process gradient exactly (up to float rounding). Batches of 7 split 4/3
across two ranks, so an unweighted average would differ.
"""

import sys
from pathlib import Path

import torch
from torch import nn

from augkd_edge import distributed
from augkd_edge.engine import fit
from augkd_edge.data import make_augment
from augkd_edge.student_stage import StudentStage


def main(out: str) -> None:
    torch.manual_seed(0)
    images = torch.rand(40, 3, 8, 8)
    labels = torch.arange(40) % 4
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(3 * 64, 4))
    student = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, 4))
    with distributed.session(torch.device("cpu")) as dist:
        stage = StudentStage("toy", student, images, labels, images[:8], labels[:8], mean=(0.5,) * 3,
                             std=(0.25,) * 3, epochs=3, batch_size=7, lr=0.01, weight_decay=1e-4, seed=1,
                             augment=make_augment("natural"), teacher=teacher, u=0.5, tau=4.0)
        result = fit(stage, 3, Path(out).with_suffix(".ckpt"), resume=False, progress=False, checkpoint_every=2)
        if dist.is_main:
            torch.save({"state": student.state_dict(), "history": result.history, "world": dist.world}, out)
        del stage, result


if __name__ == "__main__":
    main(sys.argv[1])
