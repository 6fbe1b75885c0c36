"""Sampling stages, one module each; every module here is imported by `registered_stages()`."""
