"""Helpers shared by the subcommands."""

from __future__ import annotations

import json

import click

__all__ = ["say", "emit", "json_flag"]


def say(text: str) -> None:
    """Human-readable output goes to stderr so that --json output on stdout stays clean."""
    click.echo(text, err=True)


def emit(result: dict, as_json: bool, human: str) -> None:
    if as_json:
        click.echo(json.dumps(result, indent=1, default=str))
    else:
        click.echo(human)


json_flag = click.option("--json", "as_json", is_flag=True, help="print the result as JSON on stdout")
