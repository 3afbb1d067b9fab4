"""The public Python API: ``import augkd_edge`` stays light, ``distill``'s config handling."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import augkd_edge
from augkd_edge.api import config_of
from augkd_edge.config import DistillConfig
from augkd_edge.errors import UserError


def test_import_is_torch_free_and_lists_the_api() -> None:
    code = "import sys, augkd_edge; assert 'torch' not in sys.modules, 'torch imported'; print(augkd_edge.__all__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "distill" in out and "training_stage" in out and "export_student" in out
    assert augkd_edge.__version__ == "0.1.0"


def test_config_of_merges_options_over_a_dict_a_file_or_a_config(tmp_path: Path) -> None:
    base = {"method": "kd", "mixup": {"epochs": 7, "u": 0.3}}
    cfg = config_of(base, {"seed": 3, "mixup": {"epochs": 9}})
    assert (cfg.method, cfg.seed, cfg.mixup.epochs, cfg.mixup.u) == ("kd", 3, 9, 0.3)
    assert base == {"method": "kd", "mixup": {"epochs": 7, "u": 0.3}}  # the caller's dict is untouched
    path = tmp_path / "c.json"
    path.write_text(json.dumps(base))
    assert config_of(str(path), {}).to_dict() == config_of(base, {}).to_dict()
    assert config_of(DistillConfig.preset_config("quick"), {"method": "no-kd"}).method == "no-kd"
    assert config_of(None, {}).to_dict() == DistillConfig.preset_config("quick").to_dict()


def test_distill_refuses_bad_input_before_running(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="give out"):
        augkd_edge.distill(method="kd")
    with pytest.raises(UserError, match="method"):
        augkd_edge.distill(method="nope", out=tmp_path / "run")
    with pytest.raises(UserError, match="cannot read"):
        augkd_edge.distill(tmp_path / "missing.json", out=tmp_path / "run")
