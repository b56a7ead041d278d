"""The report's tables: the same numbers and sign as the CSV, in every format."""

from __future__ import annotations

import csv

import pytest

from tinyexp.report.runs import table_rows
from tinyexp.report.tables import compact_table, to_html, to_markdown, write_rows_csv


def test_markdown_shows_the_delta_and_the_reduction_in_words(records):
    markdown = to_markdown(table_rows(records, ["f1"]), ["f1"])
    assert "| cnn-p50-int8 | cnn | l1 0.5 | int8 | 0.72 (-0.08) |" in markdown
    assert "150 (85.0% smaller)" in markdown
    assert "0.01 (50.0% faster)" in markdown
    # a baseline row is its own baseline: no change next to its numbers
    assert "| cnn-base | cnn | none | none | 0.8 | 100 |" in markdown
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
