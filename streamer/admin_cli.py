"""Admin subcommands (`streamer settings ...`, `streamer dlq ...`)."""

from __future__ import annotations


def add_admin_parsers(sub) -> None:
    pass


def run_admin(args) -> int:
    return 2
