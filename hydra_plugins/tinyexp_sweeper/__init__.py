"""Hydra sweeper that validates every job of a sweep before the first one starts."""
