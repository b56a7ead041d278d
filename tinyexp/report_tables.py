"""Report tables: number formatting and the Markdown, CSV, HTML and console tables.

Part of :mod:`tinyexp.report` (which re-exports these names).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tinyexp.report_runs import COSTS, Record, _change_pct, _sort_key
from tinyexp.summary import fmt_number


def _cells(row: dict[str, Any], metrics: Sequence[str]) -> list[str]:
    """A row as display cells: value with its change against the baseline in brackets."""
    prune = "none" if row["prune"] == "none" else f"{row['prune']} {row['ratio']:g}"
    cells = [row["run"], row["arch"], prune, row["quant"]]
    is_base = row["stage"] == "baseline"  # its own baseline: no change to show
    for name in metrics:
        delta = None if is_base else row[f"{name}_delta"]
        cells.append(fmt_number(row[name]) + ("" if delta is None else f" ({delta:+.3f})"))
    for key, _ in COSTS:
        change = None if is_base else row[f"{key}_change_pct"]
        cells.append(fmt_number(row[key]) + ("" if change is None else f" ({change:+.1f}%)"))
    return cells


def _headers(metrics: Sequence[str]) -> list[str]:
    return ["run", "arch", "pruning", "quant", *metrics, *(h for _, h in COSTS)]


def to_markdown(rows: list[dict[str, Any]], metrics: Sequence[str]) -> str:
    head = _headers(metrics)
    lines = ["| " + " | ".join(head) + " |",
             "|" + "|".join(["---"] * 4 + ["---:"] * (len(head) - 4)) + "|"]
    lines += ["| " + " | ".join(_cells(row, metrics)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_rows_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    """Rows of raw values as CSV (None as an empty cell), written atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)
    _write_text(path, buffer.getvalue())
    return path


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
<p>Final stage of each run; in brackets the change against the run's own float baseline
(task metrics: difference; costs: percent).</p>
<table><thead><tr>{head}</tr></thead><tbody>
{body}
</tbody></table>
{figures}
</body></html>
"""


def _align(lines: list[list[str]]) -> str:
    """Columns padded to width (first left, the rest right), between rules."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    text = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                      for i, (c, w) in enumerate(zip(line, widths, strict=True)))
            for line in lines]
    rule = "-" * len(text[0])
    return "\n".join([rule, text[0], rule, *text[1:], rule])


def layer_table(rows: list[dict[str, Any]], metric: str) -> str:
    """The per-layer analysis in the terminal: one line per group, the metric change per ratio."""
    ratios = sorted({r["ratio"] for r in rows if r["group"] != "(none)"})
    base = next(r[metric] for r in rows if r["group"] == "(none)")
    lines = [["group", "channels", *(f"d{metric} @{x:g}" for x in ratios)]]
    for group in dict.fromkeys(r["group"] for r in rows if r["group"] != "(none)"):
        mine = {r["ratio"]: r for r in rows if r["group"] == group}
        first = next(iter(mine.values()))
        lines.append([group, str(first["width"]), *(_layer_cell(mine.get(x), metric)
                                                    for x in ratios)])
    note = "; kept all: the ratio removes no channel of that group (rounding)" \
        if any(cell == "kept all" for line in lines for cell in line) else ""
    return f"per-layer sensitivity ({metric} unpruned: {base:.4g}{note})\n" + _align(lines)


def _layer_cell(row: dict[str, Any] | None, metric: str) -> str:
    if row is None:
        return ""
    if row["kept"] == row["width"]:
        return "kept all"
    return f"{row[f'{metric}_delta']:+.3f}"


def compact_table(records: list[Record], metric: str) -> str:
    """The console version: one line per run, the changes against the baseline."""
    head = ["run", metric, f"d{metric}", "MACs", "size B", "flash B", "RAM B", "latency ms"]
    lines = [head]
    for r in sorted(records, key=_sort_key):
        value, base = r.final(metric), r.base(metric)
        no_change = value is None or base is None or r.stage == "baseline"
        cells = [r.name, fmt_number(value), "" if no_change else f"{value - base:+.3f}"]
        for key in ("macs", "size_bytes", "flash_bytes", "ram_bytes", "latency_ms"):
            change = _change_pct(r.final(key), r.base(key))
            cells.append(fmt_number(r.final(key)) + ("" if not change else f" {change:+.0f}%"))
        lines.append(cells)
    return _align(lines)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
