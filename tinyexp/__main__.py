"""``python -m tinyexp``: the Hydra app. Heavy libraries load only once a job really runs.

How a run ends, as the shell sees it:
    0    the job (or every job of a sweep) finished
    1    a job failed while running (traceback, its MLflow run FAILED)
    2    bad input: one line ``tinyexp: error: <key or file>: <what is allowed>``; nothing ran
    130  Ctrl-C (SIGINT), 143 SIGTERM: the open MLflow run ends KILLED
``TINYEXP_DEBUG=1`` adds the traceback to a bad-input error.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from tinyexp import _resolvers  # noqa: F401  (${tinyexp.now:}, ${tinyexp.pid:} for folders)
from tinyexp.redact import RedactingStream, redact


class _BadInput(BaseException):
    """Bad input found inside a job: passes Hydra's job wrapper, which catches Exceptions (and
    prints their overrides), and stops a sweep at once."""

    def __init__(self, line: str, cause: BaseException) -> None:
        super().__init__(line)
        self.line, self.cause = line, cause


def _config_dir() -> str:
    # An installed wheel carries the configs inside the package; a checkout keeps them at the top.
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return str(candidate)
    raise FileNotFoundError(f"tinyexp: no conf/config.yaml next to {here}")


@hydra.main(version_base="1.3", config_path=_config_dir(), config_name="config")
def _app(cfg: DictConfig) -> float | None:
    from tinyexp.cli_errors import bad_input
    from tinyexp.config import validate

    try:
        validate(cfg)
        from tinyexp.pipeline import run

        return run(cfg)
    except Exception as err:
        line = bad_input(err)
        if line is None:
            raise
        raise _BadInput(line, err) from err


def main() -> None:
    """The console entry point: Hydra's app, with every way out reported in one format."""
    from tinyexp.cli_errors import bad_input, report_failure
    from tinyexp.interrupts import Interrupted, handle_signals

    # Hydra prints its own errors (a bad override, an unknown option) over several lines and
    # exits 1; letting them through lets us print them as one line and exit 2.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    if os.environ.get("TINYEXP_DEBUG"):  # the Optuna sweeper's bad-setting errors too
        os.environ.setdefault("OPTUNA5_SWEEPER_DEBUG", "1")
    sys.stdout, sys.stderr = RedactingStream(sys.stdout), RedactingStream(sys.stderr)
    try:
        with handle_signals():
            _app()
    except _BadInput as err:
        _exit_bad_input(err.line, err.cause)
    except Interrupted as stop:
        import signal

        # Stopping takes a moment (interpreter shutdown): more Ctrl-C must not cut it short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print(f"tinyexp: interrupted by {stop.signal_name}: stopped; an open MLflow run was "
              f"marked KILLED", file=sys.stderr, flush=True)
        sys.exit(stop.exit_code)
    except Exception as err:  # noqa: BLE001 - sorted into bad input and failures below
        line = bad_input(err)
        if line is None:
            report_failure(err)
            sys.exit(1)
        _exit_bad_input(line, err)


def _exit_bad_input(line: str, err: BaseException) -> None:
    if os.environ.get("TINYEXP_DEBUG"):
        import traceback

        traceback.print_exception(err)
    print(redact(f"tinyexp: error: {line}"), file=sys.stderr, flush=True)
    sys.exit(2)


if __name__ == "__main__":
    main()
