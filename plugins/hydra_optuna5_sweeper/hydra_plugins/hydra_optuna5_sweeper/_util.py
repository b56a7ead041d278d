"""Small helpers the other modules share: passwords off URLs (``redact``), one-line error
texts, numbers for progress lines, atomic file writes. Standard library only."""
# typing.Optional/List/Dict throughout, not `X | None` / `list[...]`: see optuna_sweeper's
# module docstring.
# ruff: noqa: UP006, UP035, UP045

import logging
import math
import os
import re
import uuid
from pathlib import Path
from typing import Any, Callable, List, Tuple

# scheme://user:password@  ->  the password is everything between the first ':' after the
# scheme's '//' and the last '@' before the host (passwords may hold '@' or ':').
_CREDENTIALS = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s'\"]*:)"
                          r"(?P<secret>[^\s'\"/]*)@")


def redact(text: str) -> str:
    """``text`` with every URL's password replaced by ``***`` (``user:***@host``)."""
    return _CREDENTIALS.sub(lambda m: f"{m['head']}***@", text)


def error_text(err: BaseException) -> str:
    """``Type: message`` on one line (without the search path Hydra appends to its errors)."""
    message = str(err).split("Config search path:")[0]
    message = " ".join(line.strip() for line in message.splitlines() if line.strip())
    return f"{type(err).__name__}: {message}"[:2000]


def fmt(value: Any) -> str:
    """A number for a progress line: ``12,648`` for large whole numbers, 4 significant digits
    otherwise (``0.9833``); anything else as ``str``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if not math.isfinite(value):
        return "-"
    if value == 0:
        value = 0.0  # no sign on zero, nor -0
    if float(value).is_integer() and abs(value) >= 100:
        return f"{int(value):,}"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.4g}"


def atomic_write(path: str | os.PathLike[str], content: str | Callable[[Path], Any]) -> Path:
    """Write ``content`` (text, or a callable writing the temporary path it is given) to
    ``path`` atomically: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique name created with the umask's permissions (mkstemp would make it 0600).
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
    tmp.open("xb").close()
    try:
        if isinstance(content, str):
            tmp.write_text(content)
        else:
            content(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


class _RedactLog(logging.Filter):
    """Log records without a URL's password (``user:***@host``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if redact(message) != message:
            record.msg, record.args = redact(message), None
        return True


def _consecutive(jobs: List[Tuple[Any, List[str]]]) -> List[List[Tuple[Any, List[str]]]]:
    """Split a batch into runs of consecutive trial numbers (the launcher numbers job folders
    from ``initial_job_idx`` on; another process on the same study can leave gaps)."""
    runs: List[List[Tuple[Any, List[str]]]] = []
    for job in jobs:
        if runs and job[0].number == runs[-1][-1][0].number + 1:
            runs[-1].append(job)
        else:
            runs.append([job])
    return runs
