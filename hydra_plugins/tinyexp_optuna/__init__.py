"""tinyexp's Optuna search: ``hydra/sweeper: tinyexp_optuna``, the sweeper of
hydra-optuna5-sweeper with tinyexp's defaults (see ``_node``; ``conf/search/*.yaml`` select it).
"""

from hydra_plugins.tinyexp_optuna import _node  # noqa: F401  (registers the node)
