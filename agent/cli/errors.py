"""The CLI's own error: a command's one-line refusal of what it was given."""

from __future__ import annotations

from agent.errors import InputError


class CliError(InputError):
    """A command's own one-line refusal (a bad option, a missing file): exit 2."""
