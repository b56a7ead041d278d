"""Every config file composes and validates; every bad value fails with its own one-line error."""

from __future__ import annotations

import subprocess
import sys

import pytest
from image_files import PRESET_DATA, data_dir_overrides
from support import CONF, ROOT, SKAB_DIR

from tinyexp.config import DB_DRIVERS, ConfigError, check_tracking_uri, validate

IMAGE_ARCHS = ("custom_cnn", "resnet", "mobilenet_v1", "mobilenet_v2", "vgg", "ds_cnn")
IMAGE_DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10", "cifar100")
GROUP_FILES = sorted(p for p in CONF.glob("*/*.yaml") if p.parent.name != "hydra")


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the cache folder validate() creates lands here
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _overrides_for(path) -> list[str]:
    group, option = path.parent.name, path.stem
    extra = []
    if group == "arch" and option in IMAGE_ARCHS:
        extra = ["dataset=digits"]
    if group == "dataset" and option in IMAGE_DATASETS:  # fabricated files for the file sets
        extra = ["arch=custom_cnn", *data_dir_overrides(option)]
    if group == "experiment" and option in PRESET_DATA:  # the image presets' files
        extra = data_dir_overrides(PRESET_DATA[option])
    if group == "dataset" and option == "skab":
        if not SKAB_DIR.exists():
            pytest.skip("no SKAB data here")
        extra = [f"dataset.data_dir={SKAB_DIR}", "dataset.window=64"]
    return [f"{group}={option}", *extra]


@pytest.mark.parametrize("path", GROUP_FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_config_file_composes_and_validates(compose_cfg, path):
    cfg = compose_cfg(_overrides_for(path))
    validate(cfg)


def test_defaults_are_sensors_cnn_l1_and_no_quantization(compose_cfg):
    cfg = compose_cfg()
    assert (cfg.dataset.name, cfg.arch.name, cfg.prune.name) == ("sensors", "cnn", "l1")
    assert cfg.get("quant") is None and cfg.get("analysis") is None  # null groups


BAD = [
    (["prune.ratio=1.5"], "prune.ratio", "[0, 1)"),
    (["prune.ratio=-0.1"], "prune.ratio", "[0, 1)"),
    (["prune.ratio=abc"], "prune.ratio", "Float"),
    (["prune.steps=0"], "prune.steps", ">= 1"),
    (["deploy=tflm", "deploy.mode=int4"], "deploy.mode", "float32, dynamic, int8"),
    (["deploy=tflm", "deploy.int8_quantizer=tf"], "deploy.int8_quantizer", "pt2e or aeq"),
    (["prune.finetune_epochs=-2"], "prune.finetune_epochs", ">= 0"),
    (["trainer.max_epochs=-1"], "trainer.max_epochs", ">= 1"),
    (["trainer.max_epochs=ten"], "trainer.max_epochs", "int"),
    (["+prune.foo=1"], "prune.foo", "allowed: name, ratio"),
    (["arch=cnn", "dataset=digits"], "arch", "image"),
    (["arch=custom_cnn"], "arch", "series"),
    (["dataset=skab"], "dataset.data_dir", "required"),
    (["dataset=skab", "dataset.data_dir=/no/such/dir"], "dataset.data_dir", "/no/such/dir"),
    (["arch.channels=[32,-1]"], "arch.channels", "positive"),
    (["arch.kernel_size=4"], "arch.kernel_size", "odd"),
    (["dataset.window=30"], "dataset.window", "multiple of 4"),
    (["arch=transformer", "arch.d_model=30"], "arch.d_model", "multiple of arch.num_heads"),
    (["seed=-1"], "seed", ">= 0"),
    (["optim.lr=0"], "optim.lr", "> 0"),
    (["dataset.val_fraction=1.0"], "dataset.val_fraction", "(0, 1)"),
    (["measure.latency_runs=1"], "measure.latency_runs", ">= 5"),
    (["quant=qat", "quant.weight_bits=1"], "quant.weight_bits", "[2, 8]"),
    (["quant=qat", "quant.act_bits=16"], "quant.act_bits", "[2, 8]"),
    (["quant=int8", "quant.calibrate_method=magic"], "quant.calibrate_method", "minmax"),
    (["quant=int16x8", "quant.calibration_samples=0"], "quant.calibration_samples", ">= 1"),
    (["quant=fp16", "+quant.per_channel=true"], "quant.per_channel", "allowed: name"),
    (["quant=int16x8", "quant.format=qoperator"], "quant.format", "qdq for quant=int16x8"),
    (["analysis=layers", "analysis.ratios=[0.5,1.0]"], "analysis.ratios", "(0, 1)"),
    (["analysis=layers", "analysis.ratios=[]"], "analysis.ratios", "non-empty"),
    (["analysis=layers", "analysis.finetune_epochs=-1"], "analysis.finetune_epochs", ">= 0"),
    (["analysis=layers", "analysis.metric=accuracy"], "analysis.metric", "mse, f1"),
    # every float knob finite, in every schema and stage spec
    (["dataset.threshold_scale=inf"], "dataset.threshold_scale", "finite number, got inf"),
    (["dataset.threshold_quantile=nan"], "dataset.threshold_quantile", "finite"),
    (["arch.dropout=nan"], "arch.dropout", "finite"),
    (["target.clock_mhz=inf"], "target.clock_mhz", "finite"),
    (["finetune.lr=inf"], "finetune.lr", "finite"),
    (["prune.ratio=nan"], "prune.ratio", "finite"),
    (["analysis=layers", "analysis.ratios=[0.5,nan]"], "analysis.ratios", "finite"),
    (["quant=qat", "quant.lr=inf"], "quant.lr", "finite"),
    (["distill=kd", "distill.temperature=inf"], "distill.temperature", "finite"),
    (["deploy=tflm", "deploy.arena_margin=inf"], "deploy.arena_margin", "finite"),
    (["optim.lr=inf"], "optim.lr", "finite"),
    (["+trainer.gradient_clip_val=nan"], "trainer.gradient_clip_val", "finite"),
    (["+callbacks.early_stopping.min_delta=-inf"], "callbacks.early_stopping.min_delta",
     "finite"),
    # what the data can hold
    (["dataset.num_anomalies=10000"], "dataset.num_anomalies", "[1, 95] for dataset.test_steps"),
    (["dataset.test_steps=640", "dataset.num_anomalies=12"], "dataset.num_anomalies", "[1, 11]"),
    (["dataset.train_steps=320", "dataset.stride=200"], "dataset.val_fraction",
     "0 for validation"),
    (["dataset=digits", "arch=custom_cnn", "dataset.test_fraction=0.004"],
     "dataset.test_fraction", "one per class"),
    (["dataset=digits", "arch=custom_cnn", "dataset.val_fraction=0.003"],
     "dataset.val_fraction", "one per class"),
    (["dataset=digits", "arch=custom_cnn", "arch.channels=[8,8,8,8]"], "arch.channels",
     "at most 3"),
    # the trainer, optimizer and callbacks: what needs no torch (the rest: test_preflight)
    (["++trainer.limit_train_batches=0"], "trainer.limit_train_batches", "nothing"),
    (["+trainer.callbacks=[]"], "trainer.callbacks", "top-level"),
    (["~optim._partial_"], "optim._partial_", "must be true"),
    (["callbacks.early_stopping.mode=sideways"], "callbacks.early_stopping.mode", "min or max"),
    (["callbacks.early_stopping.patience=-1"], "callbacks.early_stopping.patience", ">= 0"),
    # where the run writes
    (["cache_dir="], "cache_dir", "must be the folder"),
    (["cache_dir=null"], "cache_dir", "must be the folder"),
    (["cache_dir=/proc/x"], "cache_dir", "cannot write to '/proc/x'"),
    (["logger.tracking_uri=bogus://x"], "logger.tracking_uri", "allowed: a path, file, sqlite"),
    (["logger.tracking_uri=localhost:5000"], "logger.tracking_uri", "scheme 'localhost'"),
    (["logger.tracking_uri=http://"], "logger.tracking_uri", "names no server"),
    (["logger.tracking_uri="], "logger.tracking_uri", "or null"),
    (["logger.tracking_uri=sqlite:////proc/x/mlflow.db"], "logger.tracking_uri",
     "cannot write to '/proc/x'"),
    (["logger.tracking_uri='postgresql+asyncpg://u@db/x'"], "logger.tracking_uri",
     "allowed: psycopg2, psycopg"),
    (["logger.tracking_uri='mysql+a+b://u@db/x'"], "logger.tracking_uri", "one +driver"),
]


@pytest.mark.parametrize(("overrides", "key", "hint"), BAD, ids=lambda v: str(v))
def test_bad_values_name_the_key_and_what_is_allowed(compose_cfg, overrides, key, hint):
    cfg = compose_cfg(overrides)
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    message = str(err.value)
    assert message.startswith(f"{key}:"), message
    assert hint in message
    assert "\n" not in message


def test_empty_skab_dir_is_rejected(compose_cfg, tmp_path):
    (tmp_path / "valve1").mkdir()
    cfg = compose_cfg(["dataset=skab", f"dataset.data_dir={tmp_path}"])
    with pytest.raises(ConfigError, match=r"^dataset\.data_dir:"):
        validate(cfg)


def test_the_measure_defaults_are_the_schemas(compose_cfg):
    """config.yaml shows the measure settings; the schema holds the same defaults."""
    import dataclasses

    from tinyexp.schemas import Measure

    assert dict(compose_cfg().measure) == dataclasses.asdict(Measure())


def test_a_cache_folder_is_created_and_one_under_a_file_is_refused(compose_cfg, tmp_path):
    validate(compose_cfg([f"cache_dir={tmp_path / 'new' / 'cache'}"]))
    assert (tmp_path / "new" / "cache").is_dir()
    assert not list((tmp_path / "new" / "cache").iterdir())  # the probe file is gone
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=r"^cache_dir: cannot write to .*NotADirectoryError"):
        validate(compose_cfg([f"cache_dir={tmp_path / 'file' / 'cache'}"]))


def _missing_driver(dialect: str) -> str:
    from tinyexp.config import _installed

    return next((name for name, module in DB_DRIVERS[dialect].items()
                 if not _installed(module)), "")


@pytest.mark.parametrize("dialect", ["postgresql", "mysql", "mssql"])
def test_a_missing_database_driver_is_named_and_the_password_is_not(compose_cfg, dialect):
    driver = _missing_driver(dialect)
    if not driver:
        pytest.skip(f"every {dialect} driver is installed here")
    uri = f"{dialect}+{driver}://me:s3cr@t!@db.example:5432/runs"
    with pytest.raises(ConfigError) as err:
        validate(compose_cfg([f"logger.tracking_uri='{uri}'"]))
    message = str(err.value)
    assert message.startswith("logger.tracking_uri: ") and f"{driver} driver" in message
    assert "s3cr" not in message and "me:***@db.example" in message


def test_the_mlflow_tracking_uri_variable_is_checked_when_the_config_has_none(
        compose_cfg, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "bogus://x")
    with pytest.raises(ConfigError, match=r"^logger\.tracking_uri: MLFLOW_TRACKING_URI='bogus"):
        validate(compose_cfg())
    validate(compose_cfg(["logger=none"]))  # no tracking: the variable is not used


def test_every_store_mlflow_has_is_recognised(tmp_path):
    """The schemes MLflow 3.17 registers tracking stores for are accepted (databases: up to
    the driver), so the check never refuses what MLflow would take."""
    from mlflow.tracking._tracking_service.utils import _tracking_store_registry

    examples = {"": str(tmp_path / "runs"), "file": f"file://{tmp_path}/runs",
                "http": "http://localhost:5000", "https": "https://mlflow.example",
                "databricks": "databricks://profile", "databricks-uc": "databricks-uc",
                "uc": "uc:http://localhost:8080", "sqlite": f"sqlite:///{tmp_path}/a/m.db"}
    for scheme in _tracking_store_registry._registry:
        if scheme in examples:
            check_tracking_uri("logger.tracking_uri", examples[scheme])
        else:
            assert scheme in DB_DRIVERS, f"MLflow has a {scheme!r} store tinyexp does not know"
            try:
                check_tracking_uri("logger.tracking_uri", f"{scheme}://u@db/x")
            except ConfigError as err:
                assert "driver" in str(err), err
    assert (tmp_path / "a").is_dir()  # the sqlite file's folder


@pytest.mark.parametrize(("train_steps", "window", "stride", "val_fraction"), [
    (320, 32, 200, 0.2),   # 2 windows: none for validation
    (320, 32, 100, 0.2),   # 3 windows: 1 validates, the 2 before it overlap it
    (640, 32, 100, 0.2),   # 7 windows
    (320, 32, 2, 0.9),     # most validate; those before overlap them
    (4000, 32, 2, 0.2),    # the default
])
def test_the_sensors_split_check_matches_the_datamodule(train_steps, window, stride,
                                                        val_fraction):
    """The schema accepts a split exactly when the datamodule gets training and validation
    windows out of it."""
    from tinyexp.data.sensors import SensorsDataModule
    from tinyexp.schemas import SensorsData

    settings = {"train_steps": train_steps, "window": window, "stride": stride,
                "val_fraction": val_fraction, "test_steps": 640}
    try:
        SensorsData("tinyexp.data.sensors.SensorsDataModule", "sensors", **settings)
        accepted = True
    except ConfigError:
        accepted = False
    train, val, _ = SensorsDataModule(**settings)._load()
    assert accepted == (len(train) >= 1 and len(val) >= 1), (len(train), len(val))


def test_the_most_anomalies_the_schema_allows_fit_the_test_series():
    from tinyexp.data.sensors import generate_pump_series

    for test_steps in (640, 4000):
        most = (test_steps - 200) // 40
        assert len(generate_pump_series(0, 400, test_steps, most).anomalies) == most
        with pytest.raises(ValueError):
            generate_pump_series(0, 400, test_steps, most + 1)


def test_the_digits_constants_are_the_data_and_the_network():
    from sklearn.datasets import load_digits

    from tinyexp.data.digits import DigitsDataModule
    from tinyexp.schemas import DIGITS_CLASSES, DIGITS_IMAGES, DIGITS_SIDE

    digits = load_digits()
    assert (len(digits.images), len(set(digits.target))) == (DIGITS_IMAGES, DIGITS_CLASSES)
    assert DigitsDataModule.image_size == DIGITS_SIDE == digits.images.shape[1]


def test_validate_imports_no_torch_lightning_or_mlflow(tmp_path):
    """validate() runs on every start and for every point of a sweep: it must stay cheap."""
    code = ("import sys; sys.path.insert(0, 'tests'); from support import compose; "
            "from tinyexp.config import validate; "
            f"validate(compose(['cache_dir={tmp_path}/c', 'logger.tracking_uri=sqlite:///"
            f"{tmp_path}/m.db'])); "
            "print(sorted(m for m in ('torch', 'pytorch_lightning', 'mlflow') "
            "if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
