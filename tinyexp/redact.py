"""Keeping database passwords off the console: ``user:secret@host`` becomes ``user:***@host``.

Storage URLs (``postgresql://user:secret@db/optuna``) are config values like any other, so
they turn up in error messages and in Hydra's log lines (a multirun logs each job's overrides).
Every line tinyexp prints goes through :func:`redact`: the CLI wraps stdout and stderr in
:class:`RedactingStream` before Hydra starts.
Standard library only: the CLI imports it before anything else.
"""

from __future__ import annotations

import re
from typing import Any

# scheme://user:password@  ->  the password is everything between the first ':' after the
# scheme's '//' and the last '@' before the host (passwords may hold '@' or ':').
_CREDENTIALS = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s'\"]*:)"
                          r"(?P<secret>[^\s'\"/]*)@")


def redact(text: str) -> str:
    """``text`` with every URL's password replaced by ``***``."""
    return _CREDENTIALS.sub(lambda m: f"{m['head']}***@", text)


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
