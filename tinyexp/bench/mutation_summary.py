"""Mutation score per module from the results ``mutmut run`` (``make mutation``) left behind.

mutmut itself prints one running total; this reads its per-file result files
(``mutants/**/*.py.meta``) and prints, per mutated module, how many mutants were killed,
survived, had no covering test, timed out or crashed the test process (both detected), and the
score killed / (killed + survived).

    python -m tinyexp.bench.mutation_summary [mutants-dir]
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

# mutmut's exit-code convention (mutmut.stats.status_by_exit_code), reduced to what we report.
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests",
          36: "timeout", 24: "timeout", -24: "timeout", 152: "timeout", 255: "timeout",
          -11: "crashed", -9: "crashed", None: "not checked"}
COLUMNS = ["killed", "survived", "no tests", "timeout", "crashed", "not checked", "other"]


def summarise(mutants: Path) -> list[tuple[str, Counter]]:
    rows = []
    for meta in sorted(mutants.rglob("*.py.meta")):
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        if not codes:
            continue
        counts = Counter(STATUS.get(code, "other") for code in codes.values())
        rows.append((str(meta.relative_to(mutants))[: -len(".meta")], counts))
    return rows


def score(counts: Counter) -> str:
    tested = counts["killed"] + counts["survived"]
    return f"{100 * counts['killed'] / tested:.1f}%" if tested else "-"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    mutants = Path(args[0] if args else "mutants")
    rows = summarise(mutants)
    if not rows:
        print(f"no mutmut results under {mutants}/ (run `make mutation` first)")
        return 1
    total = sum((counts for _, counts in rows), Counter())
    width = max(len(name) for name, _ in rows)
    print(f"{'module':<{width}}  {'mutants':>7}  " + "  ".join(f"{c:>11}" for c in COLUMNS)
          + "     score")
    for name, counts in [*rows, ("total", total)]:
        print(f"{name:<{width}}  {sum(counts.values()):>7}  "
              + "  ".join(f"{counts[c]:>11}" for c in COLUMNS) + f"  {score(counts):>8}")
    print("score = killed / (killed + survived); `no tests`: no fast test reaches the function "
          "in-process")
    return 0


if __name__ == "__main__":
    sys.exit(main())
