"""Reports across runs: the sensitivity table and plots of the papers, from MLflow runs or a
multirun folder, and the per-layer sensitivity report of one run.

    tinyexp-report --sweep latest          # or: python -m tinyexp.report --sweep latest

The modules, by concern:

* :mod:`~tinyexp.report.runs`: selecting runs (MLflow, multirun folders), :class:`Record`,
  the raw table rows;
* :mod:`~tinyexp.report.seeds`: runs that differ only by seed merged into one record (mean,
  95% interval, per-seed values), as a run with ``repeats=N`` logs them;
* :mod:`~tinyexp.report.tables`: Markdown, CSV, HTML and the compact console table;
* :mod:`~tinyexp.report.plots`: metric against pruning ratio and size (Pareto front),
  latency against size;
* :mod:`~tinyexp.report.layers`: the per-layer sensitivity report (``analysis=layers``):
  :func:`~tinyexp.report.layers.write_layer_report`;
* :mod:`~tinyexp.report.callback`: :class:`~tinyexp.report.callback.MultirunSummary`, the
  Hydra callback printing the compact table when a multirun ends;
* :mod:`~tinyexp.report.cli`: ``tinyexp-report`` and
  :func:`~tinyexp.report.cli.write_report`.

Every table row and plot point is one configuration: over several seeds the mean, with the
half-width of its 95% confidence interval (``0.7244 ± 0.141``, error bars) and ``n seeds``.
Changes against the baseline follow :mod:`tinyexp.measure.changes` (task metrics:
``<metric>_delta`` = stage - baseline; costs: ``<cost>_reduction_pct``, positive = smaller or
faster) and numbers print through :func:`tinyexp.summary.fmt_number`, as in the console table
of one run. This package imports nothing itself: matplotlib and MLflow load only once a plot
is drawn or runs are read, so ``tinyexp-report --help`` and the callback stay light.
"""
