"""Flag parsing and error reporting shared by the ``heads`` commands (``heads/cli.py`` and
``heads/finetune_cli.py``)."""

from __future__ import annotations

import json
from contextlib import contextmanager
from typing import NoReturn

import typer


def parse_key_values(items: list[str] | None, flag: str) -> dict:
    """``key=value`` strings as a dict; values parsed as JSON when they are JSON (``64``,
    ``0.5``, ``true``, ``[1, 2]``), else kept as strings.

    Args:
        items: The repeated flag's values.
        flag: The flag's name, for error messages.

    Raises:
        typer.BadParameter: an item has no ``=`` or an empty key.
    """
    kwargs = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(
                f"{item!r} is not key=value (e.g. {flag} name=value)", param_hint=flag
            )
        try:
            kwargs[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            kwargs[key.strip()] = value
    return kwargs


def _fail(message: str) -> NoReturn:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


@contextmanager
def user_errors():
    """Bad input (unknown names, missing files or feature sets, bad values) → a red message and
    exit code 2 instead of a traceback."""
    try:
        yield
    except (KeyError, ValueError, FileNotFoundError) as err:
        # KeyError's str() quotes its message; show the message itself.
        _fail(err.args[0] if isinstance(err, KeyError) and err.args else str(err))
