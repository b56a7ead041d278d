"""What each config group's key does, seen through the code the pipeline runs for the group.

``OBSERVERS[group](cfg, workdir[, monkeypatch])`` builds or runs that code for a composed config
and returns a JSON-able picture of the result; ``tests/test_config_keys.py`` compares the
pictures of a config with and without one key changed.
"""

from __future__ import annotations

import hashlib
from functools import cache

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from tinyexp import cache as baseline_cache
from tinyexp import job, pipeline, tracking
from tinyexp.config import validate
from tinyexp.lit import build_trainer
from tinyexp.measure.network import Measurer


def _digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = a.numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
        h.update(str(a.shape).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


@cache
def _datamodule(dataset_yaml: str, seed: int):
    cfg = OmegaConf.create({"dataset": OmegaConf.create(dataset_yaml), "seed": seed})
    return pipeline.build_datamodule(cfg)


def _data(cfg: DictConfig):
    return _datamodule(OmegaConf.to_yaml(cfg.dataset, resolve=True), cfg.seed)


def _net(cfg: DictConfig):
    return pipeline.build_net(cfg, _data(cfg))


def _ctx(cfg: DictConfig, workdir):
    """The context the pipeline hands its stages (no tracking)."""
    return pipeline.build_context(cfg, _data(cfg), workdir, tracking.NullTracker())


def _measurer(cfg: DictConfig) -> Measurer:
    return Measurer(_data(cfg), cfg.dataset, cfg.measure)


def _apply(group: str, cfg: DictConfig, workdir):
    """The stage spec of ``group`` applied to a fresh network: ``(network, metrics)``."""
    return validate(cfg)[group].apply(_net(cfg), _ctx(cfg, workdir))


def observe_dataset(cfg, workdir):
    dm = _data(cfg)
    batches = [_digest(b[0] if isinstance(b, list | tuple) else b)
               for b in dm.train_dataloader()]
    out = {"train": batches, "val": [_digest(b[0] if isinstance(b, list | tuple) else b)
                                     for b in dm.val_dataloader()]}
    if dm.task == "anomaly":
        out["segments"] = [_digest(s.train, s.test, s.labels) for s in dm.segments]
        # A fixed detector, each window reconstructed as its own mean over time: a flat or
        # drifting window scores apart from a lively one, so the threshold rule has work to do.
        out["metrics"] = _measurer(cfg).task_metrics(
            lambda x: np.broadcast_to(x.mean(axis=1, keepdims=True), x.shape))
    else:
        out["test"] = _digest(*dm.test_arrays())
    return out


def observe_arch(cfg, workdir):
    net = _net(cfg)
    shapes = [(n, tuple(p.shape)) for n, p in net.named_parameters()]
    net.train()  # dropout acts
    torch.manual_seed(0)
    out = net(_data(cfg).example_input().repeat(4, *[1] * (_data(cfg).example_input().dim() - 1)))
    layers = sorted({type(m).__name__ for m in net.modules()})  # e.g. ReLU or ReLU6
    return {"class": type(net).__name__, "shapes": shapes, "layers": layers,
            "out": _digest(out.detach())}


def observe_prune(cfg, workdir):
    pruned, report = _apply("prune", cfg, workdir)
    from tinyexp.compress.prune import layer_widths

    report = {k: report[k] for k in ("ratio_asked", "steps", "groups_pruned", "finetune_epochs",
                                     "cut", "head_epochs") if k in report}
    return {"widths": layer_widths(pruned), "report": report,
            "weights": _digest(*[p.detach() for p in pruned.parameters()])}


def observe_quant(cfg, workdir):
    _, report = _apply("quant", cfg, workdir)
    artifact = workdir / "quantized.onnx"
    report = {k: report[k] for k in ("float_compute_ops", "epochs") if k in report}
    return {"file": hashlib.sha256(artifact.read_bytes()).hexdigest(), "report": report}


def observe_trainer(cfg, workdir):
    from pytorch_lightning.callbacks import ModelSummary

    trainer = build_trainer(cfg)
    return {
        "max_epochs": trainer.max_epochs, "accelerator": type(trainer.accelerator).__name__,
        "devices": trainer.num_devices,
        "deterministic": torch.are_deterministic_algorithms_enabled(),  # the Trainer sets it
        "checkpointing": trainer.checkpoint_callback is not None,
        "logger": trainer.logger is not None,
        "summary": any(isinstance(c, ModelSummary) for c in trainer.callbacks),
        "progress_bar": trainer.progress_bar_callback is not None,
        "log_every_n_steps": trainer.log_every_n_steps,
        "limits": [trainer.limit_train_batches, trainer.limit_val_batches],
    }


def observe_optim(cfg, workdir):
    optimizer = instantiate(cfg.optim)(_net(cfg).parameters())
    return [type(optimizer).__name__, optimizer.param_groups[0]["lr"]]


def observe_callbacks(cfg, workdir):
    found = [c for c in build_trainer(cfg).callbacks if type(c).__name__ == "EarlyStopping"]
    return [[c.monitor, c.patience, c.mode] for c in found]


def observe_logger(cfg, workdir, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{workdir / 'default.db'}")
    with tracking.job_run(cfg, "probe", job.run_tags(cfg)) as tracker:
        pass
    if tracker.run_id is None:
        return "no run"
    stores = {}
    for db in sorted(workdir.glob("*.db")):
        client = tracking.client_for(f"sqlite:///{db}")
        run = client.get_run(tracker.run_id) if _has_run(client, tracker.run_id) else None
        if run is not None:
            stores[db.name] = client.get_experiment(run.info.experiment_id).name
    return stores


def _has_run(client, run_id) -> bool:
    try:
        client.get_run(run_id)
        return True
    except Exception:
        return False


def observe_target(cfg, workdir):
    # A ladder of model sizes: which ones the target takes.
    sizes = [2 ** k for k in range(12, 24)]
    return [job.fits_target({"s/flash_bytes": f, "s/ram_bytes": r}, "s", cfg.target)
            for f in sizes for r in sizes]


def observe_analysis(cfg, workdir):
    _, metrics = _apply("analysis", cfg, workdir)
    return metrics


def observe_measure(cfg, workdir, monkeypatch):
    from tinyexp.measure import cost

    calls = []
    real = cost.ort_session

    def counting(path, threads=1):
        session = real(path, threads)

        class Counted:
            def get_inputs(self):
                return session.get_inputs()

            def run(self, *args, **kwargs):
                calls.append(1)
                return session.run(*args, **kwargs)
        return Counted()

    monkeypatch.setattr(cost, "ort_session", counting)
    artifact = workdir / "m.onnx"
    metrics = _measurer(cfg).float_network(_net(cfg), artifact)
    import onnx

    return {"opset": [o.version for o in onnx.load(str(artifact)).opset_import],
            "session_runs": len(calls), "exclusive": metrics["latency_exclusive"]}


def observe_search(cfg, workdir):
    return {"n_trials": OmegaConf.select(cfg, "hydra.sweeper.n_trials")}


def observe_seed(cfg, workdir):
    return {"key": baseline_cache.baseline_key(cfg), "data": observe_dataset(cfg, workdir),
            "net": _digest(*[p.detach() for p in _net(cfg).parameters()])}


def observe_cache_dir(cfg, workdir):
    # A baseline stored under the shipped cache_dir: the run finds it there, and only there.
    stored = workdir.parent / "cache"  # the test's cache_dir
    net = _net(cfg)
    baseline_cache.store(stored, baseline_cache.baseline_key(cfg), net, {"epochs": 0})
    ctx = _ctx(cfg, workdir)
    pipeline.baseline(_net(cfg), ctx, cfg, tracking.NullTracker())
    return ctx.tags["tinyexp.baseline_cache"]


def observe_finetune(cfg, workdir):
    # Two fine-tuning epochs of a fresh network, as the stages run them (ctx.fit): a schedule
    # stepped per epoch acts from the second.
    net = _net(cfg)
    info = _ctx(cfg, workdir).fit(net, "probe", 2)
    return {"weights": _digest(*[p.detach() for p in net.parameters()]), "curve": info["curve"]}


def observe_distill(cfg, workdir):
    # The stage makes the network the teacher of later fine-tunes: fine-tune a perturbed copy.
    ctx = _ctx(cfg, workdir)
    teacher, report = validate(cfg)["distill"].apply(_net(cfg), ctx)
    student = _net(cfg)
    with torch.no_grad():
        for p in student.parameters():
            p.mul_(0.5)
    info = ctx.fit(student, "probe", 1)
    return {"weights": _digest(*[p.detach() for p in student.parameters()]),
            "curve": info["curve"]}


def observe_deploy(cfg, workdir):
    # As after quant=int8 (deploy.mode null follows it): full integer, so calibration counts.
    ctx = _ctx(cfg, workdir)
    ctx.quant = "int8"
    _, report = validate(cfg)["deploy"].apply(_net(cfg), ctx)
    main = workdir / "firmware" / "main.cc"
    return {"status": ctx.tags.get("tinyexp.deploy_status"),
            "metrics": {k: v for k, v in report.items() if not k.startswith("latency")},
            "timed": sorted(k for k in report if k.startswith("latency")),
            "main.cc": main.read_text() if main.exists() else None}


def _run(cfg, workdir):
    """The whole job, small (no pruning), logged nowhere: what it returns to a sweeper."""
    job_cfg = OmegaConf.to_container(cfg, resolve=True)
    job_cfg.update({"prune": None, "logger": {"name": "none"}, "output_dir": str(workdir)})
    result = pipeline.run(OmegaConf.create(job_cfg))
    return {"objective": result["objective"], "keys": sorted(result["metrics"])}


OBSERVERS = {
    "dataset": observe_dataset, "arch": observe_arch, "prune": observe_prune,
    "quant": observe_quant, "trainer": observe_trainer, "optim": observe_optim,
    "callbacks": observe_callbacks, "logger": observe_logger, "target": observe_target,
    "analysis": observe_analysis, "measure": observe_measure, "search": observe_search,
    "seed": observe_seed, "cache_dir": observe_cache_dir, "finetune": observe_finetune,
    "distill": observe_distill, "deploy": observe_deploy,
    "repeats": _run, "objective": _run,
}
