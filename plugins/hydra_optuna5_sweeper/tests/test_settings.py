"""The search space and the checks of the settings, as plain functions (the sweeper running
them before any trial: ``test_sweeper.py``)."""

from __future__ import annotations

import importlib.util
import logging

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from hydra_plugins.hydra_optuna5_sweeper import SweeperSettings
from hydra_plugins.hydra_optuna5_sweeper._checks import (
    _constraints,
    _directions,
    _SettingsError,
    check_component,
    check_heartbeat,
    check_objectives,
    check_storage,
    probe_message,
    user_key,
)
from hydra_plugins.hydra_optuna5_sweeper._space import (
    SpaceError,
    build_search_space,
    collect_params,
    distribution_from_override,
    grid_choices,
)
from hydra_plugins.hydra_optuna5_sweeper._util import _RedactLog

# ----------------------------------------------------------------------------- search space


def _override(line: str):
    return OverridesParser.create().parse_overrides([line])[0]


@pytest.mark.parametrize(("line", "expected"), [
    ("a=interval(0.1, 0.9)", FloatDistribution(0.1, 0.9)),
    ("a=int(interval(2, 8))", IntDistribution(2, 8)),
    ("a=tag(log, interval(0.0001, 0.1))", FloatDistribution(0.0001, 0.1, log=True)),
    # As hydra-optuna-sweeper: Optuna's bounds include the range's stop.
    ("a=range(2, 9)", IntDistribution(2, 9)),
    ("a=range(0, 9, 3)", IntDistribution(0, 9, step=3)),
    ("a=range(0.0, 1.0, 0.25)", FloatDistribution(0.0, 1.0, step=0.25)),
    ("a=range(-5.5, 5.5, step=0.5)", FloatDistribution(-5.5, 5.5, step=0.5)),
    ("a=range(0, 5, step=0.5)", FloatDistribution(0.0, 5.0, step=0.5)),  # a float anywhere
    ("a=tag(log, int(interval(1, 5)))", IntDistribution(1, 5, log=True)),
    ("a=choice(none, int8, w4a8)", CategoricalDistribution(["none", "int8", "w4a8"])),
    ("a=1,2,3", CategoricalDistribution([1, 2, 3])),
])
def test_hydra_sweep_syntax_becomes_optuna_distributions(line, expected):
    distribution, _ = distribution_from_override(_override(line))
    assert distribution == expected


def test_a_shuffled_range_is_categorical():
    distribution, _ = distribution_from_override(_override("a=shuffle(range(1, 4))"))
    assert isinstance(distribution, CategoricalDistribution)
    assert sorted(distribution.choices) == [1, 2, 3]


@pytest.mark.parametrize(("line", "grid"), [
    ("a=range(1, 3)", [1, 2]),  # the grid leaves out the stop, as hydra-optuna-sweeper's does
    ("a=range(-1.0, 1.0, step=1)", [-1.0, 0.0]),
    ("a=choice(foo, bar)", ["foo", "bar"]),
])
def test_grid_values(line, grid):
    distribution, _ = distribution_from_override(_override(line))
    assert grid_choices(distribution) == grid


def test_an_interval_has_no_grid():
    distribution, _ = distribution_from_override(_override("a=interval(0, 1)"))
    with pytest.raises(ValueError, match="finite choices"):
        grid_choices(distribution)


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
    ({"a": "range(5, 1)"}, [], "hydra.sweeper.params.a", "cannot search range(5, 1)"),
    ({"a": "choice(1,"}, [], "hydra.sweeper.params.a", "cannot parse 'a=choice(1,'"),
    ({"prune": {"ratio": "interval(0, 1)"}}, [], "hydra.sweeper.params.prune", "mapping"),
])
def test_a_bad_sweep_is_named_where_it_was_written(params, arguments, key, text):
    with pytest.raises(SpaceError) as caught:
        build_search_space(params, arguments)
    assert caught.value.key == key and text in caught.value.message


def test_group_params_add_the_params_of_the_chosen_option():
    group_params = {"arch": {"cnn": {"arch.channels": "choice(8,16)"}, "lstm": None}}
    params, origins = collect_params({"lr": "interval(0.1, 1)"}, group_params,
                                     {"arch": "cnn"}, lambda group: ["cnn", "lstm"])
    assert params == {"lr": "interval(0.1, 1)", "arch.channels": "choice(8,16)"}
    assert origins["arch.channels"] == "hydra.sweeper.group_params.arch.cnn.arch.channels"
    with pytest.raises(_SettingsError) as caught:
        collect_params(None, {"arch": {"lstn": {}}}, {"arch": "cnn"}, lambda g: ["cnn", "lstm"])
    assert caught.value.setting == "group_params.arch.lstn"
    with pytest.raises(_SettingsError) as caught:
        collect_params(None, {"nope": {}}, {"arch": "cnn"}, lambda g: [])
    assert caught.value.setting == "group_params.nope"


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
    (check_component, ("sampler", {"_target_": "hydra_plugins.hydra_optuna5_sweeper._config."
                                              "raise_motpe_removed"}, "sampler"), "sampler",
     "The 'motpe' sampler was removed in Optuna 4.0"),
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


@pytest.mark.parametrize(("settings", "setting", "text"), [
    ({"max_failure_rate": 1.5}, "max_failure_rate", "[0, 1]"),
    ({"max_failure_rate": -0.1}, "max_failure_rate", "[0, 1]"),
    ({"max_failures": 0}, "max_failures", "int >= 1"),
    ({"resume_to_total": True, "max_failure_rate": 1.0}, "max_failures", "never stop"),
    ({"resume_to_total": "yes"}, "resume_to_total", "true or false"),
    ({"constraints": [{"metric": "final/a", "max": 1}]}, "constraints", "need objectives"),
    ({"trial_node": "not a key"}, "trial_node", "config key"),
    ({"callbacks": ["nope.nothing"]}, "callbacks.0", "nope"),
    ({"callbacks": "x"}, "callbacks", "a list"),
    ({"mlflow": {"uri": "x"}}, "mlflow", "tracking_uri"),
    ({"validator": "nope.nothing"}, "validator", "nope"),
    ({"custom_search_space": "nope-nope.configure"}, "custom_search_space", "nope"),
    ({"n_jobs": 0}, "n_jobs", "int >= 1"),
])
def test_bad_sweeper_settings_name_their_key(settings, setting, text):
    error = _error(SweeperSettings.of(settings).check)
    assert error.setting == setting and text in error.message, error.message


def test_unknown_settings_are_refused():
    with pytest.raises(TypeError, match="n_trails"):
        SweeperSettings.of({"n_trails": 3})


def test_the_defaults_check_and_leave_the_returned_value_as_the_objective():
    checked = SweeperSettings().check()
    assert checked.directions == ["minimize"] and checked.objective_names is None
    assert checked.value_names == ["value"] and checked.callbacks == []
    two = SweeperSettings(direction=["minimize", "maximize"]).check()
    assert two.value_names == ["values_0", "values_1"]


def test_a_custom_search_space_module_with_hyphens_is_the_file_next_to_the_script(
        tmp_path, monkeypatch):
    (tmp_path / "custom-space.py").write_text("def configure(cfg, trial):\n    return 42\n")
    monkeypatch.setattr("sys.argv", [str(tmp_path / "app.py")])
    for path in ("custom-space.configure", ".custom-space.configure"):
        checked = SweeperSettings(custom_search_space=path).check()
        assert checked.custom_fn(None, None) == 42


class _NamedError(ValueError):
    def __init__(self, key, message):
        super().__init__(f"{key}: {message}")
        self.key = key


def test_a_validators_error_that_names_its_key_is_shown_as_key_colon_message():
    assert probe_message(_NamedError("a.b c", "too big"), {}, None) == "a.b c: too big"
    assert probe_message(ValueError("x: must be <= 1"), {}, None) == "x: must be <= 1"
    assert probe_message(ValueError("bad thing"), {}, None) == "ValueError: bad thing"


@pytest.mark.parametrize(("target", "needs"), [
    ("optuna.samplers.GPSampler", ["torch", "scipy"]),
    ("optuna.samplers.QMCSampler", ["scipy"]),
])
def test_a_sampler_whose_optional_packages_are_missing_is_refused_up_front(target, needs):
    missing = [m for m in needs if importlib.util.find_spec(m) is None]
    if not missing:
        check_component("sampler", {"_target_": target}, "sampler")
        return
    error = _error(check_component, "sampler", {"_target_": target}, "sampler")
    assert error.setting == "sampler" and f"pip install {' '.join(missing)}" in error.message


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
