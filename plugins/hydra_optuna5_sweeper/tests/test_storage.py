"""Storage URLs with a password: the sweeper keeps it, its jobs and saved configs get the URL
without it, and ``storage_url`` puts it back from the environment in a job."""

from __future__ import annotations

import os

import pytest
from omegaconf import OmegaConf

from hydra_plugins.hydra_optuna5_sweeper import storage_url
from hydra_plugins.hydra_optuna5_sweeper._util import PASSWORD_ENV, split_password
from hydra_plugins.hydra_optuna5_sweeper.optuna_sweeper import OptunaSweeper


@pytest.mark.parametrize(("url", "bare", "password"), [
    ("postgresql+psycopg://tinyexp:s3cr:et@db:5432/optuna",
     "postgresql+psycopg://tinyexp@db:5432/optuna", "s3cr:et"),
    ("mysql://u:p%40ss@h/db", "mysql://u@h/db", "p%40ss"),
    ("postgresql://tinyexp@db/optuna", "postgresql://tinyexp@db/optuna", None),
    ("sqlite:///sweep/optuna.db", "sqlite:///sweep/optuna.db", None),
    ("journal.log", "journal.log", None),
])
def test_split_password(url, bare, password):
    assert split_password(url) == (bare, password)


def test_storage_url_puts_the_password_back_only_where_one_is_missing(monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, "s3cret")
    assert storage_url("postgresql://tinyexp@db/optuna") == "postgresql://tinyexp:s3cret@db/optuna"
    assert storage_url("postgresql://tinyexp:other@db/optuna") == \
        "postgresql://tinyexp:other@db/optuna"
    assert storage_url("postgresql://db/optuna") == "postgresql://db/optuna"  # no user
    assert storage_url("sqlite:///x.db") == "sqlite:///x.db"
    assert storage_url(None) is None
    monkeypatch.delenv(PASSWORD_ENV)
    assert storage_url("postgresql://tinyexp@db/optuna") == "postgresql://tinyexp@db/optuna"


def test_the_sweeper_hides_the_password_from_every_config_it_hands_on(monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, "before")  # restored when the test ends
    url = "postgresql+psycopg://tinyexp:s3cret@db:5432/optuna"
    sweeper = OptunaSweeper(storage=url, trial_node="trial", study_name="s")
    config = OmegaConf.create({"hydra": {
        "sweeper": {"storage": url},
        "overrides": {"hydra": [f"hydra.sweeper.storage={url}", "hydra.verbose=true"]}}})
    OmegaConf.set_readonly(config, True)
    sweeper._hide_password(config)
    bare = "postgresql+psycopg://tinyexp@db:5432/optuna"
    assert config.hydra.sweeper.storage == bare
    assert list(config.hydra.overrides.hydra) == [f"hydra.sweeper.storage={bare}",
                                                  "hydra.verbose=true"]
    assert sweeper.settings.storage == url  # the sweeper itself keeps it
    assert os.environ[PASSWORD_ENV] == "s3cret"
    sweeper.study_name = "s"
    handover = sweeper._handover("+", split_password(url)[0], 3, 7)
    assert "s3cret" not in " ".join(handover)
    assert f"hydra.sweeper.storage='{bare}'" in handover  # a password from a config file
    assert f"+trial.storage='{bare}'" in handover
