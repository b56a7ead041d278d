"""The schema of every config group option: which keys it takes, of which type, in which range.

One dataclass per option (``SensorsData``, ``CNNArch``, ``Target``, ...); each checks its ranges in
``__post_init__`` and raises ``ConfigError`` naming the key. ``tinyexp.config.validate`` merges a
composed config into these. The stages (prune, quant, analysis) are their own schemas: the spec
classes of ``tinyexp.stages`` named by ``_target_``. Only the standard library is imported:
cheap at startup.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from tinyexp.checks import ConfigError, _fraction, _positive, _require, _widths
from tinyexp.data.schemas import IMAGE_DATA_SCHEMAS
from tinyexp.measure.latency_lock import DEFAULT_LATENCY_LOCK, open_lock
from tinyexp.models.schemas import IMAGE_ARCH_SCHEMAS

# ----------------------------------------------------------------------------- datasets


@dataclass
class _SeriesData:
    _target_: str
    name: str
    task: str = "anomaly"
    input: str = "series"
    seed: int = 0
    window: int = 32
    val_fraction: float = 0.2
    batch_size: int = 64
    threshold_quantile: float = 0.999
    threshold_scale: float = 4 / 3

    def __post_init__(self) -> None:
        _require(self.window >= 4, "dataset.window", f"must be >= 4, got {self.window}")
        _fraction("dataset.val_fraction", self.val_fraction, closed_low=False)
        _positive("dataset.batch_size", self.batch_size)
        _require(0 < self.threshold_quantile <= 1, "dataset.threshold_quantile",
                 f"must be in (0, 1], got {self.threshold_quantile}")
        _positive("dataset.threshold_scale", self.threshold_scale)


@dataclass
class SensorsData(_SeriesData):
    train_steps: int = 4000
    test_steps: int = 4000
    stride: int = 2
    num_anomalies: int = 8

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("train_steps", "test_steps"):
            value = getattr(self, key)
            _require(value >= 10 * self.window, f"dataset.{key}",
                     f"must be >= 10 x dataset.window ({10 * self.window}), got {value}")
        _positive("dataset.stride", self.stride)
        # tinyexp.data.sensors: one anomaly per equal slot of the test series, 100 rows clear
        # of each end, every slot at least 40 rows long.
        most = (self.test_steps - 200) // 40
        _require(1 <= self.num_anomalies <= most, "dataset.num_anomalies",
                 f"must be in [1, {most}] for dataset.test_steps={self.test_steps} (one per "
                 f"40 rows, 100 rows clear of each end), got {self.num_anomalies}"
                 if most >= 1 else f"needs dataset.test_steps >= 240, got {self.test_steps}")
        # SensorsDataModule: the last val_fraction of the windows validates; the training
        # windows that overlap them are dropped.
        windows = (self.train_steps - self.window) // self.stride + 1
        n_val = int(round(self.val_fraction * windows))
        n_train = windows - n_val - (math.ceil((self.window - 1) / self.stride) if n_val else 0)
        _require(n_val >= 1 and n_train >= 1, "dataset.val_fraction",
                 f"splits the {windows} training windows (dataset.train_steps, window, stride) "
                 f"into {max(n_train, 0)} for training and {n_val} for validation; both need "
                 f"at least 1: change it, or lower dataset.stride")


@dataclass
class SkabData(_SeriesData):
    data_dir: str = "???"
    train_rows: int = 400
    folders: list[str] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.train_rows > self.window, "dataset.train_rows",
                 f"must be > dataset.window ({self.window}), got {self.train_rows}")
        allowed = ("valve1", "valve2", "other")
        for folder in self.folders or ():
            _require(folder in allowed, "dataset.folders",
                     f"unknown folder {folder!r}; allowed: {', '.join(allowed)}")
        # Checking the folder and every file's contents is cheap (stdlib, ~40 ms) and spares a
        # training run that would die on them later; a bad file raises ConfigError naming it.
        from tinyexp.data.skab_files import check_data_dir

        try:
            check_data_dir(self.data_dir, self.folders, window=self.window,
                           train_rows=self.train_rows)
        except FileNotFoundError as err:
            message = str(err).removeprefix("dataset.data_dir: ")
            raise ConfigError("dataset.data_dir", message) from None


# sklearn.datasets.load_digits(): 1797 8x8 images of 10 classes (DigitsDataModule).
DIGITS_IMAGES, DIGITS_CLASSES, DIGITS_SIDE = 1797, 10, 8


@dataclass
class DigitsData:
    _target_: str
    name: str = "digits"
    task: str = "classification"
    input: str = "image"
    seed: int = 0
    val_fraction: float = 0.15
    test_fraction: float = 0.2
    batch_size: int = 64

    def __post_init__(self) -> None:
        _fraction("dataset.val_fraction", self.val_fraction, closed_low=False)
        _fraction("dataset.test_fraction", self.test_fraction, closed_low=False)
        _require(self.val_fraction + self.test_fraction < 0.9, "dataset",
                 "val_fraction + test_fraction must leave at least 10% for training")
        # The splits are stratified (sklearn's train_test_split): each needs an image per class.
        n_test = math.ceil(self.test_fraction * DIGITS_IMAGES)
        n_val = math.ceil(self.val_fraction / (1 - self.test_fraction) * (DIGITS_IMAGES - n_test))
        for key, count in (("test_fraction", n_test), ("val_fraction", n_val)):
            _require(count >= DIGITS_CLASSES, f"dataset.{key}",
                     f"gives {count} of the {DIGITS_IMAGES} images; a stratified split needs at "
                     f"least one per class ({DIGITS_CLASSES}), got {getattr(self, key)}")
        _positive("dataset.batch_size", self.batch_size)

    def image_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of the images."""
        return 1, DIGITS_SIDE, DIGITS_SIDE


# ----------------------------------------------------------------------------- architectures


@dataclass
class CNNArch:
    _target_: str
    name: str = "cnn"
    input: str = "series"
    channels: list[int] = field(default_factory=lambda: [32, 16])
    kernel_size: int = 7
    dropout: float = 0.1

    def __post_init__(self) -> None:
        _widths("arch.channels", self.channels)
        _require(self.kernel_size >= 1 and self.kernel_size % 2 == 1, "arch.kernel_size",
                 f"must be an odd int >= 1, got {self.kernel_size}")
        _fraction("arch.dropout", self.dropout)


@dataclass
class LSTMArch:
    _target_: str
    name: str = "lstm"
    input: str = "series"
    hidden_size: int = 32
    num_layers: int = 1
    dropout: float = 0.0

    def __post_init__(self) -> None:
        _positive("arch.hidden_size", self.hidden_size)
        _require(self.num_layers >= 1, "arch.num_layers", f"must be >= 1, got {self.num_layers}")
        _fraction("arch.dropout", self.dropout)
        # Dropout sits between stacked LSTM layers, as in nn.LSTM: one layer has nowhere for it.
        _require(self.dropout == 0 or self.num_layers >= 2, "arch.dropout",
                 f"acts between stacked LSTM layers: with arch.num_layers=1 it must be 0, "
                 f"got {self.dropout} (set arch.num_layers >= 2)")


@dataclass
class TransformerArch:
    _target_: str
    name: str = "transformer"
    input: str = "series"
    d_model: int = 32
    num_heads: int = 4
    num_layers: int = 2
    ff_dim: int = 64
    dropout: float = 0.0

    def __post_init__(self) -> None:
        _positive("arch.num_heads", self.num_heads)
        _require(self.d_model > 0 and self.d_model % self.num_heads == 0, "arch.d_model",
                 f"must be a positive multiple of arch.num_heads ({self.num_heads}), "
                 f"got {self.d_model}")
        _require(self.num_layers >= 1, "arch.num_layers", f"must be >= 1, got {self.num_layers}")
        _positive("arch.ff_dim", self.ff_dim)
        _fraction("arch.dropout", self.dropout)


@dataclass
class CustomCNNArch:
    _target_: str
    name: str = "custom_cnn"
    input: str = "image"
    channels: list[int] = field(default_factory=lambda: [16, 32])
    hidden: int = 64
    dropout: float = 0.1

    def __post_init__(self) -> None:
        _widths("arch.channels", self.channels)
        _positive("arch.hidden", self.hidden)
        _fraction("arch.dropout", self.dropout)

    def check_input(self, shape: tuple[int, int, int]) -> None:
        """Each block halves the side: the images must keep at least 1 pixel."""
        side = min(shape[1:])
        _require(2 ** len(self.channels) <= side, "arch.channels",
                 f"has {len(self.channels)} layers, each halving the side of the dataset's "
                 f"{shape[1]}x{shape[2]} images: at most {side.bit_length() - 1}")


# ----------------------------------------------------------------------------- the rest


@dataclass
class MLflowLogger:
    name: str = "mlflow"
    tracking_uri: str | None = None
    experiment_name: str = "tinyexp"

    def __post_init__(self) -> None:
        _require(bool(self.experiment_name.strip()), "logger.experiment_name", "must not be empty")
        # tracking_uri: tinyexp.config.check_tracking_uri (it probes the environment).


@dataclass
class NoLogger:
    name: str = "none"


@dataclass
class Target:
    name: str
    board: str = "generic"
    flash_bytes: int = 1048576
    ram_bytes: int = 262144
    clock_mhz: float = 64.0

    def __post_init__(self) -> None:
        _positive("target.flash_bytes", self.flash_bytes)
        _positive("target.ram_bytes", self.ram_bytes)
        _positive("target.clock_mhz", self.clock_mhz)


@dataclass
class Measure:
    opset: int = 17
    latency_warmup: int = 100
    latency_runs: int = 1000
    latency_lock: str | None = DEFAULT_LATENCY_LOCK  # null: jobs may time side by side

    def __post_init__(self) -> None:
        _require(13 <= self.opset <= 21, "measure.opset", f"must be in [13, 21], got {self.opset}")
        _require(self.latency_warmup >= 0, "measure.latency_warmup",
                 f"must be >= 0, got {self.latency_warmup}")
        _require(self.latency_runs >= 5, "measure.latency_runs",
                 f"must be >= 5, got {self.latency_runs}")
        if self.latency_lock is not None:
            self._check_lock(self.latency_lock)

    @staticmethod
    def _check_lock(path: str) -> None:
        # Absolute: every job on the host, whatever its folder, must name the same file.
        _require(os.path.isabs(path), "measure.latency_lock",
                 f"must be an absolute path to a lock file shared by the host's jobs (e.g. "
                 f"{DEFAULT_LATENCY_LOCK}), or null for none, got {path!r}")
        try:  # create it now (cheap): a run must not find out when it first times a model
            os.close(open_lock(path))
        except OSError as err:
            raise ConfigError("measure.latency_lock", f"cannot open or create {path!r} "
                              f"({type(err).__name__}: {err.strerror or err})") from None


@dataclass
class Finetune:
    """Every training after the baseline (pruning fine-tunes, QAT): its own optimizer settings."""

    lr: float | None = None       # null: optim.lr; QAT has its own quant.lr
    scheduler: str = "cosine"     # none | cosine | onecycle
    dropout: float | None = 0.0   # null: the network's own dropout rates
    max_epochs: int | None = None  # caps every fine-tune's epochs (null: each stage's own)

    def __post_init__(self) -> None:
        _require(self.max_epochs is None or self.max_epochs >= 1, "finetune.max_epochs",
                 f"must be null or an int >= 1, got {self.max_epochs}")
        _require(self.lr is None or self.lr > 0, "finetune.lr",
                 f"must be null or a number > 0, got {self.lr}")
        _require(self.dropout is None or 0 <= self.dropout < 1, "finetune.dropout",
                 f"must be null or a number in [0, 1), got {self.dropout}")
        schedulers = ("none", "cosine", "onecycle")
        _require(self.scheduler in schedulers, "finetune.scheduler",
                 f"must be one of {', '.join(schedulers)}, got {self.scheduler!r}")


SCHEMAS: dict[str, dict[str, type]] = {
    "dataset": {"sensors": SensorsData, "skab": SkabData, "digits": DigitsData,
                **IMAGE_DATA_SCHEMAS},
    "arch": {"cnn": CNNArch, "lstm": LSTMArch, "transformer": TransformerArch,
             "custom_cnn": CustomCNNArch, **IMAGE_ARCH_SCHEMAS},
    "logger": {"mlflow": MLflowLogger, "none": NoLogger},
}
# Groups whose options all share one schema (users add their own options as YAML files).
SHARED_SCHEMAS: dict[str, type] = {"target": Target}

