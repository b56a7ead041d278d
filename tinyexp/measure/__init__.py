"""Task metrics computed from a numpy ``predict`` callable (torch model or ONNX Runtime session)."""
