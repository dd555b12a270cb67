"""Errors a user can fix, and the CLI wrapper that turns them into exit code 2.

Every command-line entry point of the project runs through :func:`cli_main`, so a bad
config produces exactly one clear line on stderr (naming the field and the fix) and a
non-zero exit, never a traceback and never half-written results.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable


class ConfigError(ValueError):
    """A user-fixable input problem. ``field`` names the offending config path."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}" if field else message)


def cli_main(fn: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run ``fn(argv)``; map :class:`ConfigError` to one stderr line and exit code 2.

    ``KeyboardInterrupt`` exits with 130 after the callee had its chance to leave only
    finished (atomically written) work behind.
    """
    try:
        rc = fn(argv)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished work is kept; rerun the same command to resume", file=sys.stderr)
        return 130
    return int(rc or 0)


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors become one-line :class:`ConfigError` s (exit 2 via
    :func:`cli_main`): the one parser class of every command line of the project."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(self.prog, message)
