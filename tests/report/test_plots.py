"""The report's plots: the Pareto front, and the PNG files written whole."""

from __future__ import annotations

import pytest

from tinyexp.report import plots
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


@pytest.fixture
def drawn(monkeypatch):
    """The axes of each plot, read after drawing and before the figure is saved and closed."""
    axes = {}
    save = plots.save_png

    def keep(fig, path):
        fig.canvas.draw()
        axes[path.name] = fig.axes[0]
        return save(fig, path)

    monkeypatch.setattr(plots, "save_png", keep)
    return axes


def _visible_labels(ax, axis="x"):
    lo, hi = getattr(ax, f"get_{axis}lim")()
    ticks = getattr(ax, f"get_{axis}ticklabels")()
    return [t.get_text() for t in ticks
            if lo <= t.get_position()[0 if axis == "x" else 1] <= hi]


def test_sizes_that_barely_differ_get_short_round_tick_labels(records, tmp_path, drawn):
    # int8 CNNs of 9,958 to 9,958.4 B: ticks at 9.9582 kB, 9.9584 kB, ... said nothing
    for record, size in zip(records[1:], (9958.0, 9958.2, 9958.4), strict=True):
        record.metrics[f"{record.stage}/flash_bytes"] = size
        record.metrics[f"{record.stage}/latency_ms"] = 0.016840 + size * 1e-9
    plot_latency_vs_size(records[1:], tmp_path / PLOTS[2])
    plot_metric_vs_size(records[1:], "f1", tmp_path / PLOTS[1])
    for name in PLOTS[1:]:
        labels = _visible_labels(drawn[name])
        assert len(labels) >= 2 and len(set(labels)) == len(labels), labels
        assert all(len(label) <= 6 and label.endswith(" kB") for label in labels), labels
        assert "10 kB" in labels
    latency = _visible_labels(drawn[PLOTS[2]], "y")
    assert len(set(latency)) == len(latency) >= 2 and max(map(len, latency)) <= 6, latency


@pytest.mark.parametrize(("value", "text"), [(10.0, "10"), (2.5, "2.5"), (0.30000000000000004,
                                             "0.3"), (12000.0, "12,000"), (0.012, "0.012")])
def test_tick_labels_show_the_tick_with_the_fewest_digits(value, text):
    assert plots.plain(value) == text


def test_metric_vs_ratio_starts_each_line_at_the_float_baseline(records, tmp_path, drawn):
    pruned = [r for r in records if r.prune != "none"]  # no unpruned run to start from
    plot_metric_vs_ratio(pruned, "f1", tmp_path / PLOTS[0])
    lines = {bars.get_label(): bars.lines[0] for bars in drawn[PLOTS[0]].containers}
    assert set(lines) == {"cnn / none", "cnn / int8", "lstm / none"}
    for label, base in (("cnn / none", 0.8), ("cnn / int8", 0.8), ("lstm / none", 0.6)):
        xs, ys = lines[label].get_data()
        assert xs[0] == pytest.approx(0.0, abs=0.05) and ys[0] == pytest.approx(base)
        assert xs[-1] == pytest.approx(0.5, abs=0.05)


def test_points_over_seeds_carry_their_interval(seed_sweep, tmp_path, drawn):
    plot_metric_vs_ratio(seed_sweep, "f1", tmp_path / PLOTS[0])
    plot_metric_vs_size(seed_sweep, "f1", tmp_path / PLOTS[1])
    ax = drawn[PLOTS[0]]
    assert "95% CI over seeds" in ax.get_title()
    (bars,) = [c for c in ax.containers if c.has_yerr]
    xs, ys = bars.lines[0].get_data()
    assert list(ys) == pytest.approx([0.7244, 0.6144])  # one point per ratio: the mean
    (segments,) = [c for c in bars.lines[2] if len(c.get_segments()) == 2]
    lows, highs = ([s[i][1] for s in segments.get_segments()] for i in (0, 1))
    assert highs[0] - lows[0] == pytest.approx(2 * 0.14105, abs=1e-4)
    sized = [c for c in drawn[PLOTS[1]].containers if c.has_yerr]
    assert len(sized) == 3  # two configurations and one float baseline (grey ring)
