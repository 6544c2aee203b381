"""User errors: mistakes a user can fix (a missing file, a wrong model kind, a bad config value
or row). The command line prints them as one line, `polar-jax CMD: error: MESSAGE`, exit 2;
anything else is a bug and keeps its traceback. This module imports nothing of ours."""

from __future__ import annotations


class UserError(Exception):
    """Base of every error whose message tells the user what to change (no traceback needed)."""


class ConfigError(UserError, ValueError):
    """A config key that is unknown, of the wrong type or out of range (the message names it)."""
