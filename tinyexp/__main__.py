"""``python -m tinyexp``: the Hydra app. Heavy libraries load only once a job really runs."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig


def _config_dir() -> str:
    # An installed wheel carries the configs inside the package; a checkout keeps them at the top.
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return str(candidate)
    raise FileNotFoundError(f"tinyexp: no conf/config.yaml next to {here}")


@hydra.main(version_base="1.3", config_path=_config_dir(), config_name="config")
def main(cfg: DictConfig) -> float | None:
    from tinyexp.config import ConfigError, validate

    try:
        validate(cfg)
    except ConfigError as err:
        print(f"tinyexp: error: {err}", file=sys.stderr)
        sys.exit(2)
    from tinyexp.pipeline import run

    return run(cfg)


if __name__ == "__main__":
    main()
