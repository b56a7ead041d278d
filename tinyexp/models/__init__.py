"""Model zoo: plain ``nn.Module`` architectures sized from Hydra config kwargs.

One file per family. Series autoencoders — ``cnn`` (1-D conv), ``lstm``, ``transformer`` — take
and return ``(batch, window, channels)`` tensors. Image classifiers take ``(batch, channels,
height, width)`` and return logits: ``custom_cnn`` (small 2-D CNN) and the zoo of ``resnet``
(v1/v2, basic/bottleneck), ``mobilenet`` (V1, V2), ``vgg`` and ``ds_cnn``, whose defaults
reproduce MLPerf Tiny's references; each zoo model is ``head(blocks(stem(x)))`` with the blocks
as cut points, built from the pieces in ``blocks``, and ``schemas`` holds their config schemas
(stdlib only). Every model is structured-prunable with :mod:`tinyexp.compress.prune` and exports
to ONNX.
"""
