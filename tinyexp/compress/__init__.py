"""Model compression: structured L1 pruning built on torch-pruning's dependency graph."""
