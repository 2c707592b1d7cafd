"""Errors that the ``d2lnet`` command reports in one line, without a traceback."""

from __future__ import annotations


class CommandError(Exception):
    """A failure, reported as ``d2lnet COMMAND: error: MESSAGE``; exit status 1."""

    exit_status = 1


class UsageError(CommandError):
    """A bad command line (an argument, a recipe, a path that cannot be used); exit status 2."""

    exit_status = 2
