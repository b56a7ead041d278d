"""The compression stages: one spec class per method, chosen by ``_target_`` in its YAML.

A stage's YAML (``conf/prune/l1.yaml``, ``conf/quant/int8.yaml``, ...) names its spec class in
``_target_``; the class's fields are the YAML keys, its ``__post_init__`` their validation and
its ``apply(net, ctx)`` what it does, returning ``(network, metrics)``. The pipeline runs the
stages in order and prefixes each one's metrics (``pruned/...``, ``quantized/...``).

Only the standard library is imported by these modules: validation runs before anything heavy
is loaded, and each ``apply`` imports torch, torch-pruning, ONNX Runtime or Brevitas itself.
"""
