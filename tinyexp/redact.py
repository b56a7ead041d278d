"""Keeping database passwords off the console: ``user:secret@host`` becomes ``user:***@host``.

Storage URLs (``postgresql://user:secret@db/optuna``) are config values like any other, so
they turn up in error messages and in Hydra's log lines (a multirun logs each job's overrides).
Every line tinyexp prints goes through :func:`redact`: the CLI wraps stdout and stderr in
:class:`RedactingStream` before Hydra starts. ``redact`` itself is the Optuna sweeper's
(hydra-optuna5-sweeper), so the sweeper's lines and tinyexp's hide a password the same way.
Standard library only (the sweeper's ``redact`` too): the CLI imports it before anything else.
"""

from __future__ import annotations

from typing import Any

from hydra_plugins.hydra_optuna5_sweeper import redact

__all__ = ["RedactingStream", "redact"]


class RedactingStream:
    """A text stream (``sys.stderr``) that redacts passwords in everything written to it.

    The CLI puts it in front of stdout and stderr before Hydra starts, so Hydra's own lines
    (``Error executing job with overrides: [...]``, a multirun's job list), log handlers and
    tracebacks are covered too. Everything else is the wrapped stream's.
    """

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(redact(text))
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)
