"""Generated pump test-bench series with SKAB's 8 channels and labelled anomalies.

A small physical model of a centrifugal pump loop, one row per second:

* the pump speed ``s`` follows operating regimes (set-points with smooth ramps) plus wander;
* pump head ``H = a s^2 - b Q_pump^2`` meets the pipe ``Q_main = g sqrt(H / k)`` (valve
  opening ``g``) and an optional leak ``Q_leak = c sqrt(H)`` upstream of the flow meter,
  which solves in closed form to ``H = a s^2 / (1 + b G^2)`` with ``G = g / sqrt(k) + c``;
* motor current follows hydraulic power plus friction, the motor temperature is a
  first-order lag of current^2, the fluid temperature a much slower lag of hydraulic power,
  the supply voltage sags with current, and vibration RMS grows with speed^2.

The test part continues the same simulation and contains anomalies of five kinds: valve
closure, leak and rotor imbalance act on the physics; stuck and drifting sensors act on one
measured channel. Magnitudes are drawn down to subtle levels so detection is not trivial.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.signal import lfilter

from tinyexp.data.skab_files import CHANNELS
from tinyexp.data.windows import AnomalySegment, SeriesDataModule, make_windows

ACC1, ACC2, CURRENT, PRESSURE, TEMPERATURE, THERMOCOUPLE, VOLTAGE, FLOW = range(8)

KINDS = ("valve_closure", "rotor_imbalance", "leak", "stuck_sensor", "drifting_sensor")
# Channels that may fail: ones that carry signal (a frozen voltage would look like noise anyway).
STUCK_CHANNELS = (ACC1, CURRENT, PRESSURE, TEMPERATURE, FLOW)
DRIFT_CHANNELS = (CURRENT, PRESSURE, TEMPERATURE, THERMOCOUPLE, FLOW)

# Pump and pipe constants (arbitrary units tuned to SKAB-like magnitudes).
HEAD_SHUTOFF = 6.0  # a: head at zero flow and full speed
PUMP_LOSS = 1.0  # b: internal loss coefficient of the pump curve
PIPE_CONDUCTANCE = 0.7  # 1/sqrt(k): flow per sqrt(head) with the valve fully open
NOISE = np.array([0.002, 0.003, 0.04, 0.01, 0.05, 0.01, 1.0, 0.3])  # per-channel sensor noise


@dataclass(frozen=True)
class Anomaly:
    """One injected anomaly; ``start``/``stop`` are row indices into the test series."""

    kind: str
    start: int
    stop: int
    magnitude: float
    channel: int | None = None


@dataclass
class PumpSeries:
    """Unscaled generated data: normal train series, test series, test point labels."""

    train: np.ndarray
    test: np.ndarray
    labels: np.ndarray
    anomalies: list[Anomaly]


def _lag(x: np.ndarray, tau: float) -> np.ndarray:
    """First-order lag with time constant ``tau`` (rows), starting in steady state."""
    a = np.exp(-1.0 / tau)
    y, _ = lfilter([1.0 - a], [1.0, -a], x, zi=[a * x[0]])
    return y


def _wander(rng: np.random.Generator, n: int, tau: float, sigma: float) -> np.ndarray:
    """Stationary Ornstein-Uhlenbeck process with std ``sigma`` and correlation time ``tau``."""
    a = np.exp(-1.0 / tau)
    e = rng.standard_normal(n) * sigma * np.sqrt(1.0 - a * a)
    y, _ = lfilter([1.0], [1.0, -a], e, zi=[a * rng.normal(0.0, sigma)])
    return y


def _speed(rng: np.random.Generator, n: int) -> np.ndarray:
    """Pump speed (fraction of nominal): regime set-points, smooth ramps and small wander."""
    setpoint = np.empty(n)
    t = 0
    while t < n:
        length = int(rng.integers(80, 400))
        setpoint[t : t + length] = rng.uniform(0.7, 1.0)
        t += length
    return _lag(setpoint, tau=20.0) + _wander(rng, n, tau=30.0, sigma=0.025)


def _ramp(n: int, start: int, stop: int, rise: int) -> np.ndarray:
    """0/1 profile that is 1 on [start, stop) with a linear rise of ``rise`` rows."""
    profile = np.zeros(n)
    profile[start:stop] = np.minimum(1.0, (np.arange(stop - start) + 1) / rise)
    return profile


def _plan_anomalies(rng: np.random.Generator, n: int, count: int) -> list[Anomaly]:
    """Place ``count`` non-overlapping anomalies, one per equal slot of the test series."""
    if count == 0:
        return []
    margin = 100  # keep clear of the ends, where the evaluation protocol flags nothing
    slot = (n - 2 * margin) / count
    if slot < 40:
        raise ValueError(f"test_steps={n} is too short for {count} anomalies")
    kinds = [KINDS[i % len(KINDS)] for i in range(count)]
    rng.shuffle(kinds)
    anomalies = []
    for i, kind in enumerate(kinds):
        longest = int(min(300, 0.7 * slot))
        duration = int(rng.integers(max(20, min(80, longest // 2)), longest + 1))
        lo = margin + int(i * slot)
        start = lo + int(rng.integers(0, int(slot) - duration + 1))
        channel = None
        if kind == "valve_closure":
            magnitude = rng.uniform(0.15, 0.5)  # fraction of valve opening lost
        elif kind == "leak":
            magnitude = rng.uniform(0.08, 0.35)  # leak conductance
        elif kind == "rotor_imbalance":
            magnitude = rng.uniform(0.05, 0.4)  # relative vibration increase
        elif kind == "stuck_sensor":
            magnitude = 0.0
            channel = int(rng.choice(STUCK_CHANNELS))
        else:
            magnitude = rng.uniform(1.5, 5.0)  # final offset in training standard deviations
            channel = int(rng.choice(DRIFT_CHANNELS))
        anomalies.append(Anomaly(kind, start, start + duration, float(magnitude), channel))
    return anomalies


def _simulate(
    rng: np.random.Generator, n: int, valve: np.ndarray, leak: np.ndarray, imbalance: np.ndarray
) -> np.ndarray:
    """Noisy (n, 8) measurements of the pump loop under the given fault drivers."""
    s = _speed(rng, n)
    ambient = 22.0 + _wander(rng, n, tau=900.0, sigma=0.3)
    mains = _wander(rng, n, tau=120.0, sigma=1.5)

    g_total = PIPE_CONDUCTANCE * valve + leak
    head = HEAD_SHUTOFF * s**2 / (1.0 + PUMP_LOSS * g_total**2)
    q_pump = g_total * np.sqrt(head)
    q_main = PIPE_CONDUCTANCE * valve * np.sqrt(head)  # the flow meter sits after the leak
    power = head * q_pump
    current = 0.6 + 0.30 * power + 0.4 * s**3

    x = np.empty((n, 8))
    x[:, ACC1] = 0.20 * (0.35 + 0.65 * s**2) * (1.0 + imbalance)
    x[:, ACC2] = 0.26 * (0.45 + 0.55 * s**2) * (1.0 + 0.6 * imbalance)
    x[:, CURRENT] = current
    x[:, PRESSURE] = 0.25 * head
    x[:, TEMPERATURE] = ambient + 8.0 * _lag(current**2, tau=300.0)
    x[:, THERMOCOUPLE] = ambient + 1.0 * _lag(power, tau=600.0)
    x[:, VOLTAGE] = 232.0 - 2.0 * current + mains
    x[:, FLOW] = 90.0 * q_main
    return x + rng.standard_normal((n, 8)) * NOISE


def generate_pump_series(
    seed: int = 0, train_steps: int = 4000, test_steps: int = 4000, num_anomalies: int = 8
) -> PumpSeries:
    """Generate the unscaled pump series; fully determined by ``seed``.

    Args:
        seed: seed of ``np.random.default_rng``.
        train_steps: rows of the normal training series.
        test_steps: rows of the test series that continues it.
        num_anomalies: anomalies injected into the test series (kinds cycle through KINDS).

    Returns:
        PumpSeries with train (train_steps, 8), test (test_steps, 8), labels (test_steps,).
    """
    # Separate streams for the faults and the process: the normal process (and so the whole
    # training series) is the same whatever anomalies are injected, which makes the clean
    # counterfactual of the test series available for checks.
    fault_rng, process_rng = np.random.default_rng(seed).spawn(2)
    n = train_steps + test_steps
    anomalies = _plan_anomalies(fault_rng, test_steps, num_anomalies)

    # Physical faults change the drivers of the simulation, so their effects propagate
    # through the coupled channels (including the slow temperatures).
    valve, leak, imbalance = np.ones(n), np.zeros(n), np.zeros(n)
    for a in anomalies:
        start, stop = train_steps + a.start, train_steps + a.stop
        if a.kind == "valve_closure":
            valve -= a.magnitude * _ramp(n, start, stop, rise=15)
        elif a.kind == "leak":
            leak += a.magnitude * _ramp(n, start, stop, rise=5)
        elif a.kind == "rotor_imbalance":
            imbalance += a.magnitude * _ramp(n, start, stop, rise=30)
    x = _simulate(process_rng, n, valve, leak, imbalance)
    train, test = x[:train_steps], x[train_steps:].copy()

    # Sensor faults only corrupt the reading of one channel.
    scale = train.std(axis=0)
    for a in anomalies:
        if a.kind == "stuck_sensor":
            test[a.start : a.stop, a.channel] = test[a.start, a.channel]
        elif a.kind == "drifting_sensor":
            steps = np.arange(1, a.stop - a.start + 1) / (a.stop - a.start)
            test[a.start : a.stop, a.channel] += a.magnitude * scale[a.channel] * steps

    labels = np.zeros(test_steps, dtype=np.int64)
    for a in anomalies:
        labels[a.start : a.stop] = 1
    return PumpSeries(train=train, test=test, labels=labels, anomalies=anomalies)


class SensorsDataModule(SeriesDataModule):
    """Embedded default dataset: the generated pump series, standard-scaled with train stats.

    Validation is the chronological tail of the training windows, and training windows that
    share rows with it are dropped: with heavy window overlap a random split would put
    near-copies of training windows in validation and make its loss optimistic.
    """

    def __init__(
        self,
        seed: int = 0,
        window: int = 32,
        train_steps: int = 4000,
        test_steps: int = 4000,
        stride: int = 2,
        val_fraction: float = 0.2,
        batch_size: int = 64,
        num_anomalies: int = 8,
    ) -> None:
        super().__init__(seed=seed, window=window, val_fraction=val_fraction, batch_size=batch_size)
        self.save_hyperparameters()
        self.train_steps = train_steps
        self.test_steps = test_steps
        self.stride = stride
        self.num_anomalies = num_anomalies
        self.channels = list(CHANNELS)
        self.anomalies: list[Anomaly] = []

    def _load(self) -> tuple[np.ndarray, np.ndarray, list[AnomalySegment]]:
        data = generate_pump_series(
            self.seed, self.train_steps, self.test_steps, self.num_anomalies
        )
        self.anomalies = data.anomalies
        mean, std = data.train.mean(axis=0), data.train.std(axis=0)
        std[std == 0] = 1.0
        train_series = (data.train - mean) / std
        test_series = (data.test - mean) / std

        windows = make_windows(train_series, self.window, self.stride)
        n_val = int(round(self.val_fraction * len(windows)))
        # Window i starts at row i*stride; keep training windows that end before validation starts.
        first_val = len(windows) - n_val
        n_train = first_val - int(np.ceil((self.window - 1) / self.stride)) if n_val else first_val
        train, val = windows[: max(n_train, 0)], windows[first_val:]

        segment = AnomalySegment(
            name="sensors",
            train=windows,
            test=make_windows(test_series, self.window, 1),
            labels=data.labels,
        )
        return train, val, [segment]
