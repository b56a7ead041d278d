"""Sorting what stopped the app into bad input (one line, exit 2) and failures (traceback).

Bad input is ours (:class:`tinyexp.schemas.ConfigError`), Hydra's (an unknown option, a key
that does not exist, an override that does not parse) or OmegaConf's (an interpolation that
does not resolve). Each becomes ``<key>: <what is wrong and what is allowed>``. Standard library
only at import time: the CLI imports this module on every start.
"""

from __future__ import annotations

import re
import sys
import traceback

_OVERRIDE = re.compile(r"Could not override '([^']+)'")
_APPEND = re.compile(r"An item is already at '([^']+)'")
_MISSING = re.compile(r"Could not find '([^']+)'")
_DELETE = re.compile(r"Could not delete from config. (?:The value of )?'([^']+)'")


def _first(text: str) -> str:
    return next((line.strip() for line in str(text).splitlines() if line.strip()), "")


def _hydra(err: Exception) -> str | None:
    """``key: message`` for Hydra's composition errors, None for anything else."""
    from hydra.errors import (
        ConfigCompositionException,
        MissingConfigException,
        OverrideParseException,
    )

    text = str(err)
    if isinstance(err, OverrideParseException):
        key = err.override.split("=", 1)[0].lstrip("+~") or "override"
        return (f"{key}: cannot parse the override {err.override!r} ({_first(text)}); "
                f"see https://hydra.cc/docs/advanced/override_grammar/basic/")
    if isinstance(err, MissingConfigException):
        found = _MISSING.search(text)
        if found is None:  # --config-name / --config-path
            return f"config: {_first(text)}"
        group, _, option = found[1].rpartition("/")
        allowed = ", ".join(err.options or ()) or "(none)"
        return f"{group}: unknown option {option!r}; allowed: {allowed}"
    if isinstance(err, ConfigCompositionException):
        if found := _OVERRIDE.search(text):
            key = found[1]
            return (f"{key}: no such key in the config (a typo? to add a new key write "
                    f"+{key}=...)")
        if found := _APPEND.search(text):
            return f"{found[1]}: already set by the config: drop the '+' to override it"
        if found := _DELETE.search(text):
            return f"{found[1]}: {_first(text)}"
        cause = err.__cause__
        key = getattr(cause, "full_key", None) or "config"
        return f"{key}: {_first(text)}" + (f" ({_first(cause)})" if cause else "")
    return None


def bad_input(err: BaseException) -> str | None:
    """``key: message`` when ``err`` is bad input, else None (a failure while running)."""
    from omegaconf.errors import OmegaConfBaseException

    from tinyexp.schemas import ConfigError

    if isinstance(err, ConfigError):
        return str(err).splitlines()[0] if str(err) else err.key
    if "hydra.errors" in sys.modules or "hydra" in sys.modules:
        line = _hydra(err)
        if line is not None:
            return line
    if isinstance(err, OmegaConfBaseException):  # e.g. ${nope} that resolves to nothing
        key = getattr(err, "full_key", None) or "config"
        return f"{key}: {_first(getattr(err, 'msg', None) or err)}"
    return None


def report_failure(err: BaseException) -> None:
    """A job failed while running: the traceback, then one line saying so."""
    from tinyexp.redact import redact

    text = "".join(traceback.format_exception(err))
    print(redact(text), file=sys.stderr, end="")
    print(redact(f"tinyexp: job failed: {type(err).__name__}: {_first(err)}"),
          file=sys.stderr, flush=True)
