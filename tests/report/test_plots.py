"""The report's plots: the Pareto front, and the PNG files written whole."""

from __future__ import annotations

import pytest

from tinyexp.report.plots import (
    PLOTS,
    pareto_front,
    plot_latency_vs_size,
    plot_metric_vs_ratio,
    plot_metric_vs_size,
)


@pytest.mark.parametrize(("lower", "expected"), [(False, [0, 1, 3]), (True, [0])])
def test_pareto_front_keeps_points_nothing_beats(lower, expected):
    points = [(100.0, 0.5), (200.0, 0.7), (300.0, 0.6), (400.0, 0.9)]
    assert pareto_front(points, lower_is_better=lower) == expected


def test_plots_are_pngs_written_atomically(records, tmp_path, is_png):
    paths = [plot_metric_vs_ratio(records, "f1", tmp_path / PLOTS[0]),
             plot_metric_vs_size(records, "f1", tmp_path / PLOTS[1]),
             plot_latency_vs_size(records, tmp_path / PLOTS[2])]
    for path in paths:
        data = path.read_bytes()
        assert is_png(data) and len(data) > 5000
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(PLOTS)  # no .tmp left
