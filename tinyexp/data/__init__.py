"""Datasets: multivariate sensor windows (sensors, SKAB) for anomaly detection; 8x8 digits and
the image sets (MNIST, Fashion-MNIST, CIFAR-10/100, in their distribution formats) for
classification."""
