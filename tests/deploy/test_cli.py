"""tinyexp-deploy inspect: a report for a model, one line and exit 2 for anything else."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tinyexp.deploy.cli import main

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tinyexp.deploy.cli", *args],
                          capture_output=True, text=True, timeout=300)


def test_inspect_prints_sizes_arena_ops_and_quantization(classifier_int8):
    result = cli("inspect", str(classifier_int8.path))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"flash         {classifier_int8.path.stat().st_size} bytes" in out
    assert "TFLM loads    yes" in out
    assert "TFLM reports head " in out and " + tail " in out
    assert "input         int8 [1, 1, 8, 8]  scale " in out
    assert re.search(r"FULLY_CONNECTED +int8, int8, int32 -> int8", out)


def test_inspect_json(classifier_int8, capsys):
    assert main(["inspect", str(classifier_int8.path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["loads"] is True and data["arena_head"] > 0 and data["arena_tail"] > 0
    assert data["input"]["dtype"] == "int8"


@pytest.mark.parametrize("make, reason", [
    (lambda p: p.write_text("print('hello')\n"), "not a TFLite model"),
    (lambda p: None, "no such file"),
])
def test_bad_files_exit_2_with_one_line(tmp_path, make, reason):
    path = tmp_path / "model.tflite"
    make(path)
    result = cli("inspect", str(path))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == f"tinyexp-deploy: {path}: {reason}" + result.stderr.split(reason)[1]
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_help_and_package_import_stay_light():
    code = (
        "import sys\n"
        "import tinyexp.deploy, tinyexp.deploy.tflm, tinyexp.deploy.csource\n"
        "from tinyexp.deploy.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
        "heavy = ('torch', 'litert_torch', 'tflite_micro', 'ai_edge_litert', 'ai_edge_quantizer')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "inspect" in result.stdout and result.stdout.strip().endswith("[]")


def test_console_script_and_extra_are_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["tinyexp-deploy"] == "tinyexp.deploy.cli:main"
    assert "litert-torch==0.10.*" in project["optional-dependencies"]["deploy"]
