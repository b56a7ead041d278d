"""Model zoo: plain ``nn.Module`` architectures sized from Hydra config kwargs.

One file per family — ``cnn`` (1-D conv autoencoder), ``lstm`` (LSTM autoencoder),
``transformer`` (transformer autoencoder) and ``custom_cnn`` (small 2-D image classifier).
Series models take and return ``(batch, window, channels)`` tensors; every model is
structured-prunable with :mod:`tinyexp.compress.prune` and exports to ONNX.
"""
