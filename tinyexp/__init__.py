"""tinyexp: TinyML compression experiments (Hydra + Lightning + torch-pruning + MLflow)."""
