"""The one error type of bad input and the small checks every schema shares (stdlib only)."""

from __future__ import annotations

from tinyexp.redact import redact


class ConfigError(ValueError):
    """A configuration value is missing, unknown, of the wrong type or out of range.

    The message is redacted (:func:`tinyexp.redact.redact`): a storage URL it echoes shows no
    password, wherever the error is printed or logged.
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(redact(f"{key}: {message}"))
        self.key = key


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(key, message)


def _positive(key: str, value: int | float) -> None:
    _require(value > 0, key, f"must be > 0, got {value}")


def _widths(key: str, values: list[int]) -> None:
    _require(len(values) >= 1 and all(v > 0 for v in values), key,
             f"must be a non-empty list of positive ints, got {list(values)}")


def _fraction(key: str, value: float, *, closed_low: bool = True) -> None:
    low_ok = value >= 0 if closed_low else value > 0
    interval = "[0, 1)" if closed_low else "(0, 1)"
    _require(low_ok and value < 1, key, f"must be in {interval}, got {value}")
