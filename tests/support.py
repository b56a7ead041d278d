"""Helpers shared by the tests (importable: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
SKAB_DIR = Path(os.environ.get("TINYEXP_SKAB_DIR", ROOT.parent / "shared" / "data" / "skab"))


def _int8_saturates() -> bool:
    """ONNX Runtime's int8 kernels on an x86 CPU without VNNI (AVX2 only) multiply u8 by s8
    with 16-bit saturation (ONNX Runtime's quantization docs; hence its ``reduce_range``), so
    an int8 model's outputs there stray further from float than the file's arithmetic does.
    Seen on an AMD EPYC with AVX2: dynamic int8 transformer outputs off by half their range."""
    import platform

    if platform.machine() not in ("x86_64", "AMD64"):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "vnni" not in flags


INT8_SATURATES = _int8_saturates()

# A job small enough for the fast tier: a few batches, short series, short latency timing.
TINY = [
    "trainer=smoke",
    "dataset.train_steps=640",
    "dataset.test_steps=640",
    "prune.finetune_epochs=1",
    "measure.latency_warmup=1",
    "measure.latency_runs=5",
]


def run_cli(args: list[str], cwd: Path, env: dict[str, str] | None = None,
            timeout: float = 600, module: str = "tinyexp") -> subprocess.CompletedProcess:
    """Run ``python -m tinyexp ARGS`` in ``cwd`` with a private MLflow store and cache."""
    full_env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'mlflow.db'}",
                "PYTHONPATH": str(ROOT), "CI": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def run_report(args: list[str], cwd: Path, env: dict[str, str] | None = None,
               timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``python -m tinyexp.report ARGS`` in ``cwd`` against the store ``run_cli`` writes."""
    return run_cli(args, cwd, env, timeout, module="tinyexp.report")


def compose(overrides: list[str] | None = None, *, hydra: bool = False):
    """The job config the app composes from ``conf/`` with ``overrides`` (Hydra's own node too
    with ``hydra=True``); Hydra's global state is cleared before and after."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return hydra_compose("config", overrides=list(overrides or []),
                                 return_hydra_config=hydra)
    finally:
        GlobalHydra.instance().clear()
