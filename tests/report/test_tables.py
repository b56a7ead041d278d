"""The report's tables: the same numbers and sign as the CSV, in every format."""

from __future__ import annotations

import csv
import re

import pytest

from tinyexp.report.runs import table_rows
from tinyexp.report.tables import compact_table, to_html, to_markdown, write_rows_csv


def test_markdown_shows_the_delta_and_the_reduction_in_words(records):
    markdown = to_markdown(table_rows(records, ["f1"]), ["f1"])
    assert "| cnn-p50-int8 | cnn | l1 0.5 | int8 | 1 | 0.72 (-0.08) |" in markdown
    assert "150 (85.0% smaller)" in markdown
    assert "0.01 (50.0% faster)" in markdown
    # a baseline row is its own baseline: no change next to its numbers
    assert "| cnn-base | cnn | none | none | 1 | 0.8 | 100 |" in markdown
    assert "percent smaller" in markdown  # the table says what the brackets hold


def test_a_larger_stage_says_larger(records):
    records[1].metrics["pruned/size_bytes"] = 1200.0
    rows = table_rows(records[1:2], ["f1"])
    assert "1,200 (20.0% larger)" in to_markdown(rows, ["f1"])
    assert "1,200 20% larger" in compact_table(records[1:2], "f1")


def test_csv_holds_raw_values_and_empty_cells_for_missing_ones(records, tmp_path):
    path = write_rows_csv(table_rows(records, ["f1"]), tmp_path / "t.csv")
    with open(path) as f:
        rows = {r["run"]: r for r in csv.DictReader(f)}
    assert float(rows["cnn-p50-int8"]["size_bytes_reduction_pct"]) == pytest.approx(85.0)
    assert rows["lstm-p50"]["macs"] == "" and rows["lstm-p50"]["macs_reduction_pct"] == ""
    assert not list(tmp_path.glob(".*.tmp")), "no half-written file left behind"


def test_html_escapes_cells_and_says_what_the_brackets_hold(records):
    rows = table_rows(records, ["f1"])
    rows[0]["run"] = "<b>"
    page = to_html(rows, ["f1"], "t & t", [])
    assert "<td>&lt;b&gt;</td>" in page and "<title>t &amp; t</title>" in page
    assert "<td>150 (85.0% smaller)</td>" in page and "percent smaller" in page


def test_compact_table_prints_the_numbers_of_the_csv(records):
    lines = compact_table(records, "f1").splitlines()
    assert "f1 delta" in lines[1]
    int8 = next(line for line in lines if line.startswith("cnn-p50-int8"))
    assert "-0.08" in int8 and "150 85% smaller" in int8 and "0.01 50% faster" in int8
    base = next(line for line in lines if line.startswith("cnn-base"))
    assert "%" not in base


def test_a_seed_sweep_is_one_row_per_configuration_with_its_interval(seed_sweep, tmp_path):
    rows = table_rows(seed_sweep, ["f1"])
    assert [(r["run"], r["n_seeds"], r["seeds"]) for r in rows] == [
        ("cnn-base", 5, "0 1 2 3 4"), ("cnn-p50", 5, "0 1 2 3 4")]
    markdown = to_markdown(rows, ["f1"])
    assert "| cnn-base | cnn | none | none | 5 | 0.7244 ± 0.141 | 100 |" in markdown
    # each seed against its own baseline: the loss varies far less than F1 itself
    assert "| 0.6144 ± 0.1303 (-0.11 ± 0.02776) | 50 (50.0% smaller) |" in markdown
    assert "0.01 (54.4 ± 4.1% faster)" in markdown  # the baselines' latency varied
    assert "95% confidence interval" in markdown
    assert not re.search(r"± 0[^.]", markdown)  # the same in every seed: no interval shown
    with open(write_rows_csv(rows, tmp_path / "t.csv")) as f:
        pruned = list(csv.DictReader(f))[1]
    assert pruned["n_seeds"] == "5" and float(pruned["f1"]) == pytest.approx(0.6144)
    assert float(pruned["f1_ci95"]) == pytest.approx(0.1303, abs=1e-4)
    assert float(pruned["f1_delta_ci95"]) == pytest.approx(0.02776, abs=1e-5)
    assert float(pruned["params_ci95"]) == 0.0


def test_single_seed_rows_have_empty_intervals_and_no_seed_note(records, tmp_path):
    rows = table_rows(records, ["f1"])
    assert {r["n_seeds"] for r in rows} == {1} and rows[0]["f1_ci95"] is None
    assert "±" not in to_markdown(rows, ["f1"]) and "confidence" not in to_markdown(rows, ["f1"])
    assert "±" not in compact_table(records, "f1")


def test_compact_table_merges_seeds(seed_sweep):
    lines = compact_table(seed_sweep, "f1").splitlines()
    assert lines[1].split()[:3] == ["run", "seeds", "f1"]
    pruned = next(line for line in lines if line.startswith("cnn-p50"))
    assert pruned.split()[:8] == ["cnn-p50", "5", "0.6144", "±", "0.1303", "-0.11", "±",
                                  "0.02776"]
    assert "54 ± 4% faster" in pruned
    assert len([line for line in lines if line.startswith("cnn-")]) == 2
    assert lines[-1] == "a ± b: mean ± 95% CI over the row's seeds (t-distribution)"
