"""Generated C++ sources compile (against the stub TFLM headers) and hold the exact model bytes."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest

from tinyexp.deploy.csource import TFLM_OPS, _add_method, model_array, write_sources
from tinyexp.deploy.export import DeployError

STUB_HEADER = "tensorflow/lite/micro/micro_mutable_op_resolver.h"
needs_gxx = pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is not installed")


@pytest.fixture(scope="module")
def stubs():
    from pathlib import Path

    return Path(__file__).parent / "tflm_stubs"


def gxx(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(["g++", "-std=c++17", "-Wall", "-Wextra", "-Werror", *args],
                          capture_output=True, text=True, cwd=cwd, timeout=120)


def test_every_tflm_operator_maps_to_a_resolver_method(stubs):
    # the stub's method list is copied from TFLM's real header, not from our mapping
    declared = set(re.findall(r"TfLiteStatus (Add\w+)\(\);", (stubs / STUB_HEADER).read_text()))
    assert {_add_method(op) for op in TFLM_OPS} == declared
    assert _add_method("CONV_2D") == "AddConv2D"
    assert _add_method("BATCH_MATMUL") == "AddBatchMatMul"
    for op in ("GELU", "CUSTOM:MyOp"):
        with pytest.raises(DeployError, match=f"operator {op}: TFLite Micro has no kernel"):
            _add_method(op)


@needs_gxx
@pytest.mark.parametrize("which", ["classifier_int8", "autoencoder_int8"])
def test_sources_compile_and_carry_the_model(request, which, stubs, tmp_path):
    from tinyexp.deploy.tflm import inspect

    exported = request.getfixturevalue(which)
    ins = inspect(exported.path)
    sample = exported.inputs[0]
    paths = write_sources(exported.path, tmp_path / "src", arena_bytes=ins.arena_bytes,
                          margin=0.25, sample=sample)
    assert [p.name for p in paths] == ["model_data.h", "model_data.cc", "main.cc"]
    main = (tmp_path / "src" / "main.cc").read_text()
    arena = int(re.search(r"constexpr int kTensorArenaSize = (\d+);", main).group(1))
    assert arena % 16 == 0 and ins.arena_bytes * 1.25 <= arena < ins.arena_bytes * 1.25 + 16
    registered = re.findall(r"resolver\.(Add\w+)\(\)", main)
    assert registered == [_add_method(op) for op in ins.op_names]
    assert f"MicroMutableOpResolver<{len(ins.op_names)}>" in main
    assert f"kInputScale = {ins.input.scale:.9g}f" in main
    assert f"kInputZeroPoint = {ins.input.zero_point};" in main

    result = gxx("-fsyntax-only", f"-I{stubs}", "main.cc", cwd=tmp_path / "src")
    assert result.returncode == 0, result.stderr

    # the array, linked into a tiny program, writes back exactly the .tflite bytes
    (tmp_path / "dump.cc").write_text(
        '#include <cstdio>\n#include "model_data.h"\n'
        "int main() { return std::fwrite(g_model_data, 1, g_model_data_len, stdout) "
        "== g_model_data_len ? 0 : 1; }\n")
    built = gxx("-Isrc", "dump.cc", "src/model_data.cc", "-o", "dump", cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    dumped = subprocess.run([str(tmp_path / "dump")], capture_output=True, timeout=60)
    assert dumped.stdout == exported.path.read_bytes()


def test_model_array_is_aligned_xxd_style():
    text = model_array(bytes(range(14)))
    assert text.startswith("alignas(16) const unsigned char g_model_data[] = {\n  0x00, 0x01,")
    assert "0x0b,\n  0x0c, 0x0d\n};" in text
    assert text.endswith("const unsigned int g_model_data_len = 14;\n")


def test_sample_and_margin_are_checked(classifier_int8, tmp_path):
    with pytest.raises(ValueError, match="takes 64"):
        write_sources(classifier_int8.path, tmp_path, arena_bytes=1000,
                      sample=np.zeros(10, np.float32))
    with pytest.raises(ValueError, match="fraction"):
        write_sources(classifier_int8.path, tmp_path, arena_bytes=1000, margin=1024)
    assert not list(tmp_path.iterdir())
