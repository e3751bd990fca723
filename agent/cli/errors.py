"""Turn library errors into the one line and exit code a technician sees."""

from __future__ import annotations

import click

EXIT_BAD_INPUT = 2


class CliError(click.ClickException):
    """A one-line failure with a chosen exit code (2 for bad input)."""

    exit_code = EXIT_BAD_INPUT

    def format_message(self) -> str:
        return self.message

    def show(self, file: object = None) -> None:
        click.echo(f"santi: {self.format_message()}", err=True)
