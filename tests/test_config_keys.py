"""Every config key is wired: changing it changes what the run builds or measures.

For each leaf key of each option of each config group (and the top-level nodes), the test
composes the real config twice, once as shipped and once with that key changed, hands both to
the code the pipeline runs for that group (the datamodule, the network, the prune and quantize
stages, the Trainer, the tracker, the target verdict, ...) and asserts that what comes out
differs. A key that changes nothing is a bug: wire it, or list it in ``DESCRIPTIVE`` with the
reason it is there.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from image_files import data_dir_overrides, write_cifar10, write_cifar100, write_mnist
from key_observers import OBSERVERS
from omegaconf import DictConfig, OmegaConf
from support import CONF, SKAB_DIR, TINY, compose

from tinyexp.config import describe, validate

pytestmark = pytest.mark.usefixtures("single_thread")

# Keys that describe an option rather than configure it, and why each is there.
DESCRIPTIVE = {
    "trainer.resume": "whether a killed baseline training's rerun resumes from its end-of-epoch "
                      "checkpoints; by design it changes no weight or metric (tests/test_resume.py "
                      "checks the resumed run equals an uninterrupted one) and no cache key",
    "name": "the option's name: selects its schema and stage, labels the run (run name, "
            "tinyexp.<group> tag); changing it alone names another option",
    "_target_": "Hydra's instantiation key: the class built; each class has its own tests",
    "_partial_": "Hydra's instantiation key: build a factory, not an object",
    "dataset.task": "what the data is for; config.validate checks analysis.metric against it",
    "dataset.input": "series or image; config.validate checks it against arch.input",
    "arch.input": "series or image; config.validate checks it against dataset.input",
    "target.board": "the board the budget comes from; logged as a param, read by no stage",
    "target.clock_mhz": "the part's clock; logged as a param, read by no stage (latency is "
                        "measured on the host, not scaled to the MCU)",
    "quant=int16x8:quant.format": "16-bit activations exist only as QDQ in ONNX Runtime: the "
                                  "key states it, config.validate rejects anything else",
    "analysis=depth:analysis.tolerance": "picks best_cut among the cuts within it of the uncut "
        "network: here an untrained network, which every trained head beats, so the best cut "
        "is the smallest at any tolerance; the rule: tests/stages/test_depth.py",
    "analysis=depth:analysis.freeze": "what training a head changes: the kept blocks' weights "
        "(tests/compress/test_depth.py); the accuracy of a one-epoch head on an untrained "
        "network is chance either way",
    **{f"dataset={name}:dataset.download": "acts only where the files are missing (offline "
       "here): tests/data/test_images.py serves them over HTTP"
       for name in ("mnist", "fashion_mnist", "cifar10", "cifar100")},
}
# Groups that hold presets of other groups' keys, not keys of their own.
PRESET_GROUPS = {"experiment": "presets of other groups' keys (tested in test_config)",
                 "hydra": "Hydra's own help text",
                 "schedule": "per-dataset presets of trainer.max_epochs and finetune.max_epochs"}

# The value a key is changed to where ``_changed`` cannot guess one.
CHANGES = {
    "seed": 1,
    "repeats": 2,
    "objective": "roc_auc",
    "finetune.lr": 0.01,
    "finetune.scheduler": "onecycle",
    "finetune.dropout": 0.5,
    "finetune.max_epochs": 1,              # the probe fine-tunes 2 epochs
    "deploy.mode": "dynamic",
    "deploy.calibration_samples": 8,
    "deploy.arena_margin": 0.5,
    "deploy.int8_quantizer": "aeq",
    "dataset.window": 64,                  # still a multiple of the CNN's 4
    "dataset.data_dir": "<other data>",
    "dataset.train_samples": 40,           # of the fabricated sets' 100 training images
    "dataset.test_samples": 10,            # of their 20-30 test images
    "dataset=cifar100:dataset.train_samples": 200,  # two per class at least
    "dataset=cifar100:dataset.test_samples": 40,    # two per superclass (label=coarse below)
    "dataset=cifar100:dataset.val_fraction": 0.5,   # 4 images a class: 0.3 still holds out 1
    "dataset=cifar100:dataset.label": "fine",
    "dataset.folders": ["valve1"],
    "dataset.threshold_quantile": 0.9,
    "dataset.val_fraction": 0.3,
    "dataset.test_fraction": 0.3,
    "arch.channels": [16, 8],
    "arch.kernel_size": 5,
    "arch.d_model": 16,
    "arch.num_heads": 2,
    "arch.dropout": 0.3,
    "prune.ratio": 0.3,
    "prune.round_to": 3,
    "prune.max_layer_ratio": 0.5,          # = prune.ratio: the ranked groups ~uniform
    "prune.layer_ratios": str(CONF.parent / "tests/compress/fixtures/"
                              "layer_sensitivity_cnn.csv"),  # another group analysed
    "prune.taylor_batches": 1,             # of the small job's 4 training batches
    "quant.calibration_samples": 16,   # fewer than the small job's training windows
    "quant.calibrate_method": "entropy",
    "quant.format": "qdq",
    "quant.weight_bits": 4,
    "quant.act_bits": 4,
    "trainer.accelerator": "gpu",          # none here: the Trainer refuses it, so it is read
    "trainer.devices": 2,
    "trainer.enable_progress_bar": True,
    "trainer.limit_train_batches": 2,
    "trainer.limit_val_batches": 1,
    "optim._target_": "torch.optim.SGD",
    "callbacks.early_stopping.monitor": "train/loss",
    "callbacks.early_stopping.mode": "max",
    "logger.tracking_uri": "<other store>",
    "logger.experiment_name": "other",
    "target.flash_bytes": 65536,
    "target.ram_bytes": 16384,
    "measure.opset": 18,
    "measure.latency_lock": "<no lock>",   # null: jobs time side by side, latency_exclusive=0
    "analysis.ratios": [0.25],
    "arch.block": "bottleneck",
    "arch.activation": "relu6",
    "arch=vgg:arch.hidden": [64],
    "arch=resnet:arch.depths": [2, 1, 1],
    "arch=resnet:arch.widths": [8, 16, 32],
    "arch=vgg:arch.depths": [1, 1, 2, 2, 2],
    "arch=mobilenet_v1:arch.strides": [1, 1, 1, 2, 1, 2, 1, 1, 1, 1, 1, 1, 1, 1],
    "arch=mobilenet_v2:arch.strides": [1] * 9 + [2] + [1] * 8,
    "prune.cut": 2,
    "prune.head_width": 4,
    "prune.lr": 0.01,
    "analysis.cuts": [2],
    "analysis.head_width": 4,
    "analysis.tolerance": 1.0,             # every cut qualifies: the smallest is the best
    "analysis.metric": "f1",
    "cache_dir": "<other cache>",
}
# Settings a key is compared under, where the default makes the check slow or moot.
CONTEXT = {
    "dataset=digits": ["arch=custom_cnn"],
    **{f"dataset={name}": ["arch=custom_cnn", f"dataset.data_dir=<images {name}>",
                           "dataset.batch_size=32"]  # several batches of the 100 images
       for name in ("mnist", "fashion_mnist", "cifar10")},
    "dataset=cifar100": ["arch=custom_cnn", "dataset.data_dir=<images cifar100>",
                         "dataset.batch_size=32", "dataset.label=coarse"],
    "dataset=skab": ["dataset.data_dir=<skab copy>", "dataset.train_rows=100"],
    **{f"arch={name}": ["dataset=digits"]
       for name in ("custom_cnn", "resnet", "mobilenet_v1", "mobilenet_v2", "vgg", "ds_cnn")},
    "arch=lstm": ["arch.num_layers=2"],            # dropout acts between stacked layers
    "quant=dynamic": ["arch=custom_cnn", "dataset=digits"],  # per-channel: Linear weights
    "quant=qat": ["quant.epochs=1", "arch=custom_cnn", "dataset=digits"],  # fold_bn: BatchNorm
    "analysis=layers": ["analysis.ratios=[0.5]"],
    # depth pruning cuts a network made of blocks: a small ResNet on the digits
    "prune=depth": ["dataset=digits", "arch=resnet", "prune.cut=1", "prune.head_epochs=1",
                    "prune.finetune_epochs=1"],
    "analysis=depth": ["dataset=digits", "arch=resnet", "analysis.cuts=[1,2]",
                       "analysis.head_epochs=1", "analysis.tolerance=0"],
    "distill=kd": ["dataset=digits", "arch=custom_cnn"],  # the temperature softens logits
    # Every pruning criterion under global ranking, with decoder.1.0's share read from a
    # layer_sensitivity.csv (it tolerates 0.25 within 2 %, not within 1 %), so that
    # max_layer_ratio, layer_ratios and layer_tolerance act as well. (With encoder.0.0's share
    # fixed instead, fpgm's ranking of the untrained CNN comes out uniform: nothing to cap.)
    **{f"prune={f.stem}": [
        "prune.global_ranking=true",
        "prune.layer_ratios=" + str(CONF.parent / "tests/compress/fixtures/"
                                    "layer_sensitivity_cnn_decoder.csv"),
    ] for f in sorted((CONF / "prune").glob("*.yaml")) if f.stem not in ("none", "depth")},
}
# The small job every comparison starts from.
BASE = TINY


def _compose(overrides: list[str]) -> DictConfig:
    return compose(overrides, hydra=True)


def _leaves(node, prefix: str):
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=False)  # `???` values are leaves too
    for key, value in node.items():
        path = f"{prefix}.{key}"
        if isinstance(value, dict):
            yield from _leaves(value, path)
        else:
            yield path


def _cases() -> list[tuple[str, str]]:
    """(option selection, dotted key) for every leaf key; presets sharing an option's schema
    (``w4a8`` is ``qat``, ``smoke`` is ``default``) are covered by that option."""
    cases, seen = [], set()
    for folder in sorted(p for p in CONF.iterdir() if p.is_dir()):
        group = folder.name
        if group in PRESET_GROUPS:
            continue
        for option in sorted(f.stem for f in folder.glob("*.yaml")):
            raw = yaml.safe_load((folder / f"{option}.yaml").read_text()) or {}
            body = raw.get(group, raw) if group == "search" else raw
            node = OmegaConf.create({k: v for k, v in body.items()
                                     if k not in ("defaults", "hydra")})
            if group != "search":
                extra = [o for o in _context(f"{group}={option}") if "<" not in o]
                node = _compose([f"{group}={option}", *extra])[group]
                if node is None:  # a null stage group (prune=none): no keys
                    continue
            for key in _leaves(node, group):
                label = (group, node.get("name") if group != "search" else option, key)
                if label not in seen:
                    seen.add(label)
                    cases.append((f"{group}={option}", key))
    cfg = _compose([])
    for top in ("seed", "repeats", "objective", "cache_dir", "optim", "callbacks", "finetune",
                "measure"):
        keys = _leaves(cfg[top], top) if isinstance(cfg[top], DictConfig) else [top]
        cases += [("", key) for key in keys]
    return cases


def _context(selection: str) -> list[str]:
    return CONTEXT.get(selection, [])


def _descriptive(selection: str, key: str) -> str | None:
    if f"{selection}:{key}" in DESCRIPTIVE:
        return DESCRIPTIVE[f"{selection}:{key}"]
    if key in CHANGES or f"{selection}:{key}" in CHANGES:
        return None
    return DESCRIPTIVE.get(key) or DESCRIPTIVE.get(key.rsplit(".", 1)[-1])


def _other_data(selection: str, workdir: Path) -> Path:
    """Another folder of the same data set's files: the real SKAB, other fabricated images."""
    name = selection.removeprefix("dataset=")
    if name == "skab":
        return SKAB_DIR
    writers = {"mnist": write_mnist, "fashion_mnist": write_mnist, "cifar10": write_cifar10,
               "cifar100": write_cifar100}
    writers[name](workdir / "other-images", seed=7)
    return workdir / "other-images"


def _changed(selection: str, key: str, value, workdir: Path):
    new = CHANGES.get(f"{selection}:{key}", CHANGES.get(key))
    if new is not None:
        if new == "<other data>":
            return str(_other_data(selection, workdir))
        if new == "<other store>":
            return f"sqlite:///{workdir / 'other.db'}"
        if new == "<other cache>":
            return str(workdir / "other-cache")
        if new == "<no lock>":
            return None
        return new
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value / 2
    raise AssertionError(f"{key}: no change known for {value!r}; add one to CHANGES")


def _skab_copy(workdir: Path) -> Path:
    """Part of the real SKAB data plus a 'valve2' folder, so data_dir and folders can differ."""
    copy = workdir / "skab"
    if not copy.exists():
        (copy / "valve1").mkdir(parents=True)
        (copy / "valve2").mkdir()
        shutil.copytree(SKAB_DIR / "anomaly-free", copy / "anomaly-free")
        files = sorted((SKAB_DIR / "valve1").glob("*.csv"))
        for f in files[:2]:
            shutil.copy(f, copy / "valve1" / f.name)
        shutil.copy(files[2], copy / "valve2" / "0.csv")
    return copy


# ----------------------------------------------------------------------------- the test


ALL_CASES = _cases()
CASES = [c for c in ALL_CASES if not _descriptive(*c)]


def _id(case):
    selection, key = case
    return f"{selection}:{key}" if selection else key


def _param(index, case):
    # The slow tier checks every key. The fast tier (kept under 10 minutes) checks every fourth,
    # a spread over the groups, but never the TFLite Micro deployment's or the calibration
    # methods' keys (10-15 s each).
    selection, key = case
    slow = index % 4 != 0 or selection.startswith("deploy=tflm") or \
        key.endswith("calibrate_method")
    return pytest.param(case, id=_id(case), marks=pytest.mark.slow if slow else ())


@pytest.mark.parametrize("case", [_param(i, c) for i, c in enumerate(CASES)])
def test_changing_a_key_changes_what_the_run_builds(case, tmp_path, monkeypatch):
    selection, key = case
    if "skab" in selection + " ".join(_context(selection)) and not SKAB_DIR.is_dir():
        pytest.skip(f"no SKAB data at {SKAB_DIR}")
    monkeypatch.chdir(tmp_path)
    group = key.split(".", 1)[0]
    observe = OBSERVERS[group]
    extra = [selection, *_context(selection)] if selection else []
    extra = [o.replace("<skab copy>", str(_skab_copy(tmp_path))) if "<skab copy>" in o else o
             for o in extra]
    extra = [data_dir_overrides(o.split("<images ")[1][:-1])[0] if "<images " in o else o
             for o in extra]
    other_data = any(o.startswith("dataset=") and o != "dataset=sensors" for o in extra)
    context = [*(o for o in BASE if not (other_data and o.startswith("dataset."))),
               f"cache_dir={tmp_path / 'cache'}", *extra]

    results, value, new = [], None, None
    for changed in (False, True):
        overrides = context
        if changed:
            value = OmegaConf.select(_compose(context), key)
            new = _changed(selection, key, value, tmp_path)
            overrides = [*context, f"{key}={json.dumps(new) if new is not None else 'null'}"]
        cfg = _compose(overrides)
        if group != "search":  # as a job gets it: Hydra's node is the sweeper's business
            cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
        validate(cfg)  # the change must be a valid config: a rejected value proves nothing
        workdir = tmp_path / f"job{int(changed)}"
        workdir.mkdir()
        args = (cfg, workdir, monkeypatch) if group in ("logger", "measure") else (cfg, workdir)
        try:
            seen = observe(*args)
        except Exception as err:  # valid config, refused by the code that reads the key
            seen = f"raised {type(err).__name__}: {err}"
        results.append(json.dumps(seen, sort_keys=True, default=str))
    assert results[0] != results[1], (f"{key}: changing it from {value!r} to {new!r} changed "
                                      f"nothing that {observe.__name__} sees")


def test_every_descriptive_entry_names_keys_that_exist():
    keys = {key for _, key in ALL_CASES}
    suffixes = {key.rsplit(".", 1)[-1] for key in keys}
    for entry in DESCRIPTIVE:
        key = entry.split(":", 1)[-1]
        assert key in keys or key in suffixes, f"DESCRIPTIVE lists {entry!r}: no such key"
    assert len(CASES) > 80  # the wiring test still covers the keys that configure something


def test_every_group_has_an_observer():
    groups = {p.name for p in CONF.iterdir() if p.is_dir()} - set(PRESET_GROUPS)
    assert groups <= set(OBSERVERS), groups - set(OBSERVERS)


@pytest.mark.parametrize("preset", sorted(p.stem for p in (CONF / "quant").glob("w*a*.yaml")))
def test_qat_presets_carry_the_bits_their_names_say(preset):
    quant = _compose([f"quant={preset}"]).quant
    assert quant.name == "qat"
    assert f"w{quant.weight_bits}a{quant.act_bits}" == preset
    assert describe(_compose([f"quant={preset}"])).endswith(f"qat-{preset}")
