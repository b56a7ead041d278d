"""Hydra sweeper driving an Optuna (>= 4) study: ask a batch of trials, launch them as Hydra jobs,
tell Optuna what each job returned, resume from the study's storage when run again.

Select it with ``override /hydra/sweeper: tinyexp_optuna`` (see ``conf/search/*.yaml``).
"""
