"""The Optuna sweeper's search space and the checks of its settings, as plain functions
(the sweeper running them before any trial: ``test_optuna_sweeper.py`` and
``tests/test_bad_inputs.py``)."""

from __future__ import annotations

import importlib.util
import logging

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from hydra_plugins.tinyexp_optuna._settings import (
    _constraints,
    _directions,
    _SettingsError,
    check_component,
    check_heartbeat,
    check_objectives,
    check_storage,
    user_key,
)
from hydra_plugins.tinyexp_optuna._space import SpaceError
from hydra_plugins.tinyexp_optuna.optuna_sweeper import (
    _RedactLog,
    build_search_space,
    distribution_from_override,
)

# ----------------------------------------------------------------------------- search space


def _override(line: str):
    return OverridesParser.create().parse_overrides([line])[0]


@pytest.mark.parametrize(("line", "expected"), [
    ("a=interval(0.1, 0.9)", FloatDistribution(0.1, 0.9)),
    ("a=int(interval(2, 8))", IntDistribution(2, 8)),
    ("a=tag(log, interval(0.0001, 0.1))", FloatDistribution(0.0001, 0.1, log=True)),
    ("a=range(2, 9)", IntDistribution(2, 8)),  # Hydra's range excludes its stop
    ("a=range(0, 10, 3)", IntDistribution(0, 9, step=3)),
    ("a=range(0.0, 1.0, 0.25)", FloatDistribution(0.0, 0.75, step=0.25)),
    ("a=choice(none, int8, w4a8)", CategoricalDistribution(["none", "int8", "w4a8"])),
    ("a=1,2,3", CategoricalDistribution([1, 2, 3])),
])
def test_hydra_sweep_syntax_becomes_optuna_distributions(line, expected):
    distribution, _ = distribution_from_override(_override(line))
    assert distribution == expected


def test_list_choices_go_back_to_hydra_as_lists():
    space = build_search_space({"arch.channels": "choice([32,16],[16,8])", "quant": "int8,fp16"},
                               ["prune.ratio=0.3", "quant=dynamic", "x=interval(0, 1)"])
    assert space.distributions["arch.channels"] == CategoricalDistribution(["[32,16]", "[16,8]"])
    assert "quant" not in space.distributions  # fixed on the command line, which wins
    assert space.fixed == ["prune.ratio=0.3", "quant=dynamic"]
    overrides = space.overrides({"arch.channels": "[16,8]", "x": 0.25})
    assert overrides == ["prune.ratio=0.3", "quant=dynamic", "arch.channels=[16,8]", "x=0.25"]
    parsed = OverridesParser.create().parse_overrides(overrides)
    assert parsed[2].value() == [16, 8]


@pytest.mark.parametrize(("params", "arguments", "key", "text"), [
    ({"prune.ratio": "interval(0.9, 0.1)"}, [], "hydra.sweeper.params.prune.ratio",
     "cannot search interval(0.9, 0.1)"),
    ({}, ["prune.ratio=interval(0.9, 0.1)"], "prune.ratio", "low <= high"),
    ({"lr": "tag(log, interval(0.0, 0.1))"}, [], "hydra.sweeper.params.lr", "cannot search"),
    ({"a": "range(5, 1)"}, [], "hydra.sweeper.params.a", "empty range"),
    ({"a": "choice(1,"}, [], "hydra.sweeper.params.a", "cannot parse 'a=choice(1,'"),
    ({"prune": {"ratio": "interval(0, 1)"}}, [], "hydra.sweeper.params.prune", "mapping"),
])
def test_a_bad_sweep_is_named_where_it_was_written(params, arguments, key, text):
    with pytest.raises(SpaceError) as caught:
        build_search_space(params, arguments)
    assert caught.value.key == key and text in caught.value.message


def test_group_params_are_named_by_their_group_and_option():
    origins = {"arch.hidden_size": "hydra.sweeper.group_params.arch.lstm.arch.hidden_size"}
    with pytest.raises(SpaceError) as caught:
        build_search_space({"arch.hidden_size": "range(9, 3)"}, [], origins=origins)
    assert caught.value.key == origins["arch.hidden_size"]


# ----------------------------------------------------------------------------- settings


def _error(check, *args) -> _SettingsError:
    with pytest.raises(_SettingsError) as caught:
        check(*args)
    return caught.value


@pytest.mark.parametrize(("check", "args", "setting", "text"), [
    (_directions, ("sideways",), "direction", "minimize, maximize"),
    (_directions, (None,), "direction", "minimize, maximize"),
    (check_objectives, (["final/f1", "final/ram_bytes"], ["maximize"]), "objectives",
     "one per direction"),
    (check_objectives, (["f1"], ["maximize"]), "objectives.0", "'final/<metric>'"),
    (check_objectives, ({"a": 1}, ["maximize"]), "objectives", "a list of metrics"),
    (_constraints, ("final/flash_bytes",), "constraints", "a list of"),
    (_constraints, ([{"metric": "final/flash_bytes"}],), "constraints", "max: ..."),
    (_constraints, ([{"metric": "final/flash_bytes", "max": 1, "min": 0}],), "constraints",
     "max: ..."),
    (_constraints, ([{"metric": "final/flash_bytes", "max": "abc"}],), "constraints.0.max",
     "finite number"),
    (_constraints, ([{"metric": "final/flash_bytes", "min": float("nan")}],),
     "constraints.0.min", "finite number"),
    (_constraints, ([{"metric": "flash", "max": 1}],), "constraints.0.metric", "<stage>"),
    (check_heartbeat, (0, 10), "heartbeat_interval", "int >= 1"),
    (check_heartbeat, (60, 30), "grace_period", "longer than heartbeat_interval"),
    (check_heartbeat, (None, "x"), "grace_period", "int >= 1"),
    (check_component, ("sampler", {"_target_": "optuna.samplers.TPESampler", "seed": -1},
                       "sampler"), "sampler.seed", "int >= 0 or null"),
    (check_component, ("sampler", {"_target_": "optuna.samplers.NSGAIISampler",
                                   "crossover_prob": 1.5}, "sampler"),
     "sampler.crossover_prob", "[0, 1]"),
    (check_component, ("sampler", {"_target_": "optuna.samplers.Nope"}, "sampler"),
     "sampler._target_", "cannot import"),
    (check_component, ("sampler", {"_target_": "optuna.samplers.TPESampler", "foo": 1},
                       "sampler"), "sampler", "Optuna rejects the sampler"),
    (check_component, ("pruner", {"_target_": "optuna.pruners.HyperbandPruner",
                                  "max_resource": "most"}, "pruner"),
     "pruner.max_resource", "or auto"),
    (check_component, ("pruner", "median", "pruner"), "pruner", "hydra/sweeper/pruner="),
    (check_storage, ("",), "storage", "must be null"),
    (check_storage, ("bogus://x",), "storage", "not a database URL"),
    (check_storage, ("sqlite://",), "storage", "in-memory"),
    (check_storage, ("sqlite:////proc/nope/optuna.db",), "storage", "not writable"),
    (check_storage, ("/proc/nope/journal.log",), "storage", "not writable"),
])
def test_bad_settings_name_their_setting(check, args, setting, text):
    error = _error(check, *args)
    assert error.setting == setting and text in error.message, error.message
    assert str(error) == f"hydra.sweeper.{setting}: {error.message}"


def test_good_settings_pass():
    assert _directions(["maximize", "MINIMIZE"]) == ["maximize", "minimize"]
    assert check_objectives("objective", ["maximize"]) == ["objective"]
    check_heartbeat(None, None)
    check_component("pruner", None, "pruner")
    check_component("pruner", {"_target_": "optuna.pruners.HyperbandPruner",
                               "max_resource": "auto"}, "pruner")
    check_storage(None)


def test_a_storage_password_is_never_echoed(tmp_path):
    if any(importlib.util.find_spec(m) for m in ("psycopg", "psycopg2")):
        pytest.skip("a PostgreSQL driver is installed")
    error = _error(check_storage, "postgresql://user:secret@localhost/db")
    assert "secret" not in str(error) and "user:***@localhost" in str(error)
    assert "driver" in error.message


def test_the_launchers_log_lines_lose_a_storage_password():
    record = logging.LogRecord("hydra", logging.INFO, __file__, 1, "\t#%d : %s", (
        0, "x=0.5 ++optuna.storage='postgresql://user:secret@db/optuna'"), None)
    assert _RedactLog().filter(record)
    assert record.getMessage() == "\t#0 : x=0.5 ++optuna.storage='postgresql://user:***@db/optuna'"


@pytest.mark.parametrize(("setting", "typed"), [
    ("n_trials", "search.n_trials"),
    ("sampler.seed", "seed"),
    ("constraints.0.max", "target.flash_bytes"),
    ("constraints.1.max", "hydra.sweeper.constraints.1.max"),
    ("n_jobs", "hydra.sweeper.n_jobs"),
    ("storage", "hydra.sweeper.storage"),
])
def test_an_interpolated_setting_is_named_by_the_key_the_user_typed(setting, typed):
    raw = {"n_trials": "${search.n_trials}", "n_jobs": 1,
           "sampler": {"seed": "${oc.select:seed,null}"},
           "constraints": [{"metric": "final/flash_bytes", "max": "${target.flash_bytes}"},
                           {"metric": "final/ram_bytes", "max": "x${target.ram_bytes}"}]}
    assert user_key(raw, setting) == typed
