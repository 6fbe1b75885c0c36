"""User errors on the command line: one red line on stderr and exit code 1, no traceback.

Any command may raise `UserError` (or a `ConfigError`, or an exception type another module
registered with `register_user_error`); the app's command group catches them and prints the
message. Set `PIE_DEBUG=1` to get the full traceback instead. Imported by `pie_cli.main` and
by every verb module that wants to report a user mistake.
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn

from pie.config import ConfigError


class UserError(Exception):
    """A mistake the user can fix; the message is one sentence naming the fix."""


_USER_ERRORS: list[type[BaseException]] = [UserError, ConfigError]
_USER_ERROR_NAMES: set[str] = set()


def register_user_error(exc_type: type[BaseException] | str) -> None:
    """Treat `exc_type` as a user error in every command (one line, exit 1).

    Pass the dotted name (`"pie.model.errors.ModelLoadError"`) instead of the class to avoid
    importing a heavy module when the CLI starts: `pie --version` should not load torch.
    """
    if isinstance(exc_type, str):
        _USER_ERROR_NAMES.add(exc_type)
    elif exc_type not in _USER_ERRORS:
        _USER_ERRORS.append(exc_type)


def user_error_types() -> tuple[type[BaseException], ...]:
    return tuple(_USER_ERRORS)


def is_user_error(exc: BaseException) -> bool:
    """True if `exc` is (a subclass of) a registered user error, by class or by dotted name."""
    if isinstance(exc, tuple(_USER_ERRORS)):
        return True
    return any(f"{c.__module__}.{c.__qualname__}" in _USER_ERROR_NAMES for c in type(exc).__mro__)


def debug_enabled() -> bool:
    return os.environ.get("PIE_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


def print_error(message: str) -> None:
    """Print one error line in red on stderr (plain text when stderr is not a terminal)."""
    line = " ".join(str(message).split()) or "unknown error"
    if sys.stderr.isatty() and not os.environ.get("NO_COLOR"):
        sys.stderr.write(f"\x1b[31merror:\x1b[0m {line}\n")
    else:
        sys.stderr.write(f"error: {line}\n")
    sys.stderr.flush()


def fail(message: str) -> NoReturn:
    """Abort the current command with a user error."""
    raise UserError(message)
