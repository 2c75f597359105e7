"""The one exception type for problems a user can fix.

Anything raised as :class:`UserError` is printed by the CLI as a single line on stderr and exits 1.
Tracebacks are reserved for bugs. Messages name the file (and manifest line) and say what to do.
"""
from __future__ import annotations

from os import PathLike

# What parsing user data (JSON, TOML) can raise besides its own DecodeError: ValueError covers bytes that are not
# UTF-8 and integers past Python's 4,300-digit limit; deep nesting ([[[[…) exhausts the recursion limit. Every
# reader of a file a user can touch catches all of these, so each is one line, never a traceback.
PARSE_ERRORS = (ValueError, RecursionError)


class UserError(Exception):
    """A problem with the user's input, data, config or environment; carries a one-line message."""

    def __init__(self, message: str, *, path: str | PathLike | None = None, line: int | None = None):
        where = ""
        if path is not None:
            where = f"{path}"
            if line is not None:
                where += f":{line}"
            where += ": "
        # One line, always: embedded newlines would break "one clear line" for the CLI.
        super().__init__((where + message).replace("\n", " "))
        self.path = path
        self.line = line


class AudioError(UserError):
    """Audio that cannot be read or is unusable (missing, corrupt, empty, non-finite)."""


class ManifestError(UserError):
    """A manifest line that is not valid."""


class ConfigError(UserError):
    """A config file or override that is unknown, mistyped or impossible."""


class ModelError(UserError):
    """A model folder or id that cannot be loaded."""
