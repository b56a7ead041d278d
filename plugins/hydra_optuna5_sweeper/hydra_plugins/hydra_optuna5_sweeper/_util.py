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
from typing import Any, Callable, List, Optional, Tuple

# scheme://user:password@  ->  the password is everything between the first ':' after the
# scheme's '//' and the last '@' before the host (passwords may hold '@' or ':').
_CREDENTIALS = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s'\"]*:)"
                          r"(?P<secret>[^\s'\"/]*)@")


def redact(text: str) -> str:
    """``text`` with every URL's password replaced by ``***`` (``user:***@host``)."""
    return _CREDENTIALS.sub(lambda m: f"{m['head']}***@", text)


# The password of the study's storage, for the jobs: they get the URL without it.
PASSWORD_ENV = "OPTUNA5_SWEEPER_STORAGE_PASSWORD"


def split_password(url: str) -> Tuple[str, Optional[str]]:
    """``(url without its password, the password or None)``: ``user:pw@host`` -> ``user@host``."""
    match = _CREDENTIALS.search(url)
    if match is None:
        return url, None
    start, end = match.span()
    return url[:start] + match["head"][:-1] + "@" + url[end:], match["secret"]


def storage_url(url: Optional[str]) -> Optional[str]:
    """The storage URL a job got from the sweeper (``trial_node``'s ``storage``), with the
    password put back from the environment (``OPTUNA5_SWEEPER_STORAGE_PASSWORD``, set by the
    sweeper when the configured URL had one); any other URL as it is.

    The sweeper hands its jobs the URL without the password, so that no job config, override
    or log holds it: open the study with ``optuna.load_study(storage=storage_url(...))``.
    """
    password = os.environ.get(PASSWORD_ENV)
    if not url or not password or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    userinfo, at, host = rest.partition("@")
    if not at or ":" in userinfo or "/" in userinfo:
        return url  # no user, or a password already
    return f"{scheme}://{userinfo}:{password}@{host}"


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
