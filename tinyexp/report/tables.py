"""Report tables: the Markdown, CSV, HTML and console (compact) tables of the runs.

Numbers are formatted by :func:`tinyexp.summary.fmt_number` and changes against the baseline
by :func:`tinyexp.summary.fmt_reduction`, as in the console table of a single run; over
several seeds each as ``mean ± ci95`` (:func:`tinyexp.summary.fmt_mean_ci`).
"""

from __future__ import annotations

import base64
import csv
import html
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tinyexp.files import atomic_write
from tinyexp.report.runs import COSTS, Record, table_rows
from tinyexp.summary import fmt_mean_ci, fmt_number, fmt_reduction

# Said under every table: which change the brackets hold, and its sign.
CHANGE_NOTE = ("Final stage of each run; in brackets the change against the run's own float "
               "baseline: task metrics stage - baseline, costs percent smaller (or larger; "
               "faster or slower for latency).")
# Added when a row is over several seeds.
SEEDS_NOTE = ("Over several seeds: mean ± half-width of its 95% confidence interval "
              "(t-distribution), each change computed per seed against that seed's baseline; "
              "no ± where every seed gave the same number.")
# The console's version, under the compact table.
COMPACT_SEEDS_NOTE = "a ± b: mean ± 95% CI over the row's seeds (t-distribution)"


def note(rows: list[dict[str, Any]]) -> str:
    """What the cells hold: :data:`CHANGE_NOTE`, and :data:`SEEDS_NOTE` over several seeds."""
    several = any(row["n_seeds"] > 1 for row in rows)
    return CHANGE_NOTE + (" " + SEEDS_NOTE if several else "")


def _cell(row: dict[str, Any], key: str, change: str | None, decimals: int = 1,
          brackets: bool = True) -> str:
    """``value ± ci`` and, unless the row is its own baseline, the change (± ci): a task
    metric's ``<key>_delta``, or a cost's ``<key>_reduction_pct`` in words."""
    text = fmt_mean_ci(row[key], row[f"{key}_ci95"])
    if change is None or row["stage"] == "baseline":  # its own baseline: no change to show
        return text
    value, ci = row[change], row[f"{change}_ci95"]
    if value is None:
        return text
    shown = fmt_mean_ci(value, ci, signed=True) if change.endswith("_delta") \
        else fmt_reduction(value, key, decimals, ci=ci)
    return f"{text} ({shown})" if brackets else f"{text} {shown}"


def _cells(row: dict[str, Any], metrics: Sequence[str]) -> list[str]:
    """A row as display cells: value with its change against the baseline in brackets."""
    prune = "none" if row["prune"] == "none" else f"{row['prune']} {fmt_number(row['ratio'])}"
    cells = [row["run"], row["arch"], prune, row["quant"], str(row["n_seeds"])]
    cells += [_cell(row, name, f"{name}_delta") for name in metrics]
    cells += [_cell(row, key, f"{key}_reduction_pct") for key, _ in COSTS]
    return cells


def _headers(metrics: Sequence[str]) -> list[str]:
    return ["run", "arch", "pruning", "quant", "n seeds", *metrics, *(h for _, h in COSTS)]


def to_markdown(rows: list[dict[str, Any]], metrics: Sequence[str]) -> str:
    head = _headers(metrics)
    lines = ["| " + " | ".join(head) + " |",
             "|" + "|".join(["---"] * 4 + ["---:"] * (len(head) - 4)) + "|"]
    lines += ["| " + " | ".join(_cells(row, metrics)) + " |" for row in rows]
    return note(rows) + "\n\n" + "\n".join(lines) + "\n"


def write_rows_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    """Rows of raw values as CSV (None as an empty cell), written atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)
    return atomic_write(path, buffer.getvalue())


def to_html(rows: list[dict[str, Any]], metrics: Sequence[str], title: str,
            images: Sequence[Path]) -> str:
    """A self-contained page: the table and the plots embedded as data URIs."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in _headers(metrics))
    body = "\n".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in _cells(row, metrics))
                     + "</tr>" for row in rows)
    figures = "\n".join(
        f'<figure><img alt="{p.stem}" src="data:image/png;base64,'
        f'{base64.b64encode(p.read_bytes()).decode()}"><figcaption>{p.stem}</figcaption></figure>'
        for p in images)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; white-space: nowrap; }}
th:nth-child(-n+4), td:nth-child(-n+4) {{ text-align: left; }}
tr:nth-child(even) {{ background: #f6f6f6; }}
img {{ max-width: 720px; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{html.escape(note(rows))}</p>
<table><thead><tr>{head}</tr></thead><tbody>
{body}
</tbody></table>
{figures}
</body></html>
"""


def align(lines: list[list[str]]) -> str:
    """Columns padded to width (first left, the rest right), between rules."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    text = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                      for i, (c, w) in enumerate(zip(line, widths, strict=True)))
            for line in lines]
    rule = "-" * len(text[0])
    return "\n".join([rule, text[0], rule, *text[1:], rule])


def compact_table(records: list[Record], metric: str) -> str:
    """The console version: one line per configuration (runs that differ only by seed
    merged), the changes against its own baseline."""
    costs = ("macs", "size_bytes", "flash_bytes", "ram_bytes", "latency_ms")
    rows = table_rows(records, [metric])
    lines = [["run", "seeds", metric, f"{metric} delta", "MACs", "size B", "flash B", "RAM B",
              "latency ms"]]
    for row in rows:
        delta = "" if row["stage"] == "baseline" or row[f"{metric}_delta"] is None else \
            fmt_mean_ci(row[f"{metric}_delta"], row[f"{metric}_delta_ci95"], signed=True)
        lines.append([row["run"], str(row["n_seeds"]), _cell(row, metric, None), delta,
                      *(_cell(row, key, f"{key}_reduction_pct", decimals=0, brackets=False)
                        for key in costs)])
    several = any(row["n_seeds"] > 1 for row in rows)
    return align(lines) + ("\n" + COMPACT_SEEDS_NOTE if several else "")
