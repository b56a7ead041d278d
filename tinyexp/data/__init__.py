"""Datasets: multivariate sensor windows for anomaly detection and 8x8 digits for classification."""
