"""The one exception the model layer raises for problems a user can fix.

Everything under `pie.model` that fails because of a missing, corrupt or unsupported model
raises `ModelLoadError` with one sentence that names the file (or repo) and what to do. The
CLI prints it as a single line; the worker reports it to the controller.
"""

from __future__ import annotations


class ModelLoadError(Exception):
    """A model cannot be resolved or loaded; the message says which file and what to do."""
