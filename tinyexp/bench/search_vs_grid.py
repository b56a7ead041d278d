"""Does the Optuna search find the grid's best feasible model with a third of the trials?

Runs the full grid of a discrete space with tinyexp's grid sweeper, then the Optuna search
(``search=memory_budget``) over the same space, as categorical choices, with a third as many
trials, both through the real command line, and compares the best feasible metric each found.
Same config and seed give the same metrics, so a search trial that lands on a grid point
reproduces the grid's number.

    python -m tinyexp.bench.search_vs_grid --out bench-out [extra overrides ...]

Prints a table and writes ``<out>/search_vs_grid.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tinyexp.stages.base import MODEL_STAGES

# The space both runs cover, and what both hold fixed: a CNN too wide for the tiny target
# uncompressed, so feasibility is what the search has to find.
RATIOS = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
QUANTS = ["none", "dynamic", "int8", "fp16"]
FIXED = ["prune=l1", "arch=cnn", "arch.channels=[64,32]", "target=tiny", "logger=none"]
OBJECTIVE = "f1"


def _run(args: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    env = {**os.environ, "CI": "1"}
    subprocess.run([sys.executable, "-m", "tinyexp", *args], cwd=cwd, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def _feasible(metrics: dict, stage: str, target: dict) -> bool:
    return (metrics[f"{stage}/flash_bytes"] <= target["flash_bytes"]
            and metrics[f"{stage}/ram_bytes"] <= target["ram_bytes"])


def grid(out: Path, extra: list[str]) -> dict:
    """Every point of the space, judged like the search judges a trial."""
    sweep = out / "grid"
    seconds = _run(["-m", f"hydra.sweep.dir={sweep}", *FIXED,
                    f"prune.ratio={','.join(map(str, RATIOS))}", f"quant={','.join(QUANTS)}",
                    *extra], out)
    points = []
    for job in sorted(sweep.glob("[0-9]*"), key=lambda p: int(p.name)):
        metrics = json.loads((job / "metrics.json").read_text())
        cfg = yaml.safe_load((job / "config.yaml").read_text())
        stage = [s for s in MODEL_STAGES if f"{s}/f1" in metrics][-1]
        quant = cfg.get("quant") or {"name": "none"}  # quant=none is a null group
        points.append({"ratio": cfg["prune"]["ratio"], "quant": quant["name"],
                       "bits": quant.get("weight_bits"),
                       "value": metrics[f"{stage}/{OBJECTIVE}"],
                       "feasible": _feasible(metrics, stage, cfg["target"])})
    feasible = [p for p in points if p["feasible"]]
    best = max(feasible, key=lambda p: p["value"]) if feasible else None
    return {"trials": len(points), "feasible": len(feasible), "best": best, "seconds": seconds}


def search(out: Path, n_trials: int, extra: list[str]) -> dict:
    """The Optuna search over the same space, ``n_trials`` trials."""
    import optuna

    sweep = out / "search"
    seconds = _run(["-m", "search=memory_budget", f"search.n_trials={n_trials}",
                    f"hydra.sweep.dir={sweep}", *FIXED,
                    f"prune.ratio=choice({','.join(map(str, RATIOS))})",
                    f"quant=choice({','.join(QUANTS)})", *extra], out)
    storage = f"sqlite:///{sweep / 'optuna.db'}"
    study = optuna.load_study(study_name=optuna.get_all_study_names(storage)[0], storage=storage)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    feasible = [t for t in done if t.user_attrs.get("feasible")]
    best = max(feasible, key=lambda t: t.value) if feasible else None
    return {"trials": len(study.trials), "complete": len(done), "feasible": len(feasible),
            "best": {"value": best.value, "params": best.params, "number": best.number}
            if best else None, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench-out"))
    parser.add_argument("--fraction", type=float, default=1 / 3,
                        help="search trials as a share of the grid's (default 1/3)")
    parser.add_argument("overrides", nargs="*", help="extra tinyexp overrides for both runs")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    size = len(list(itertools.product(RATIOS, QUANTS)))
    reference = grid(args.out, args.overrides)
    found = search(args.out, int(size * args.fraction), args.overrides)
    gap = None
    if reference["best"] and found["best"]:
        gap = 100 * (reference["best"]["value"] - found["best"]["value"]) / reference["best"][
            "value"]
    report = {"grid": reference, "search": found, "gap_pct": gap}
    (args.out / "search_vs_grid.json").write_text(json.dumps(report, indent=2))
    print(f"grid:   {reference['trials']} trials, {reference['feasible']} feasible, best "
          f"{OBJECTIVE} {reference['best']['value'] if reference['best'] else None} "
          f"at {reference['best']}, {reference['seconds']:.0f} s")
    print(f"search: {found['trials']} trials ({found['complete']} complete, "
          f"{found['feasible']} feasible), best {found['best']}, {found['seconds']:.0f} s")
    print(f"gap to the grid's best: {gap:.2f}%" if gap is not None else "gap: n/a")


if __name__ == "__main__":
    main()
