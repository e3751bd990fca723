"""The one root of Santi's exceptions, and the exit code each carries to the command line.

Every exception class in the project derives from `SantiError`, so a caller
that wants "anything Santi says went wrong" catches one class, and the CLI
translates all of them in one place (``agent/cli/__init__.py``): the message
as one line on stderr, the process exit code from the error. A library error
is worded for the person who reads it (file, key, what to do), so the CLI
passes it through as it is.

Exit codes: `EXIT_BAD_INPUT` (2) when what the person gave is at fault (a
config, a file, an option: fix it and run again); `EXIT_FAILURE` (1) when the
input was fine and something at run time failed (a radio, a broker, a disk).
This module is part of the contract layer (see docs/architecture.md): it
imports nothing of Santi, so `simulator` and `hq` may derive from it.
"""

from __future__ import annotations

EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2


class SantiError(Exception):
    """Something Santi reports in one line; ``exit_code`` is what the CLI exits with (1: a run-time failure)."""

    exit_code: int = EXIT_FAILURE

    def one_line(self) -> str:
        """The message on one line (a multi-line message is joined with "; "), as the CLI prints it."""
        lines = [line.strip() for line in str(self).splitlines() if line.strip()]
        return "; ".join(lines) or type(self).__name__


class InputError(SantiError):
    """What the person gave (config, file, option, record) is at fault: fix it and run again (exit 2)."""

    exit_code = EXIT_BAD_INPUT
