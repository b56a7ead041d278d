"""Capturing what C++ code writes to the process's stderr, to turn it into one-line errors.

The converter (MLIR diagnostics), TFLite Micro (``MicroPrintf``) and absl write their reasons
to file descriptor 2, not to Python's ``sys.stderr``; the exception they raise says only
"failed". The descriptor is pointed at a temporary file for the duration of the call.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

# Lines that are noise, never a reason.
_NOISE = re.compile(
    r"^(WARNING: All log messages before absl|I\d{4} |W\d{4} |INFO: |Running Calibration"
    r"|\[RecordingMicroAllocator\]|\s*$)"
)


class Captured:
    """The text written to stderr inside a :func:`capture_stderr` block (after it ends)."""

    text = ""

    def reason(self, fallback: str = "") -> str:
        """One line saying why: MLIR ``error:`` diagnostics first (from the captured text or
        the exception text in ``fallback``), else the captured messages (TFLM's), else
        ``fallback``."""
        lines = [ln.strip() for ln in self.text.replace("\r", "\n").splitlines()]
        lines = [ln for ln in lines if not _NOISE.match(ln)]
        errors = [_diagnostic(ln) for ln in [*lines, *str(fallback).splitlines()] if "error:" in ln]
        picked = errors[:2] or lines[:3]
        return one_line("; ".join(dict.fromkeys(picked)) or fallback)


def _diagnostic(line: str) -> str:
    """``<loc or path>: error: failed to legalize operation 'x' ...: %18 = ...`` -> the reason."""
    reason = line.split("error:", 1)[1].strip()
    return re.split(r":\s*%\w+ = ", reason, maxsplit=1)[0]


def one_line(text: str, limit: int = 300) -> str:
    """Collapse whitespace to a single line of at most ``limit`` characters."""
    text = " ".join(str(text).split()).replace("tensorflow/lite/micro/", "")
    return text if len(text) <= limit else text[: limit - 3] + "..."


@contextmanager
def capture_stderr() -> Iterator[Captured]:
    """Redirect file descriptor 2 (and ``sys.stderr``) into a buffer for the block."""
    captured = Captured()
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield captured
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            captured.text = tmp.read().decode(errors="replace")
