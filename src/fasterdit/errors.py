"""Errors that carry a message meant for the user, printed by the CLI without a traceback."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user: a config value, a path, a file. The message names the problem."""


class ConfigError(UserError, ValueError):
    """A configuration value is invalid. The message names the field and what is allowed."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


class DataError(UserError):
    """A data file is missing, corrupt or of the wrong shape. The message names the file."""
