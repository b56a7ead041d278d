"""Benchmarks: scripts that measure tinyexp itself (run them by hand; they are not tests)."""
