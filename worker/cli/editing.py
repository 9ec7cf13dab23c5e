"""What the commands that write a realm's settings share: the store (the secret key checked first), and
who is running them (kept in the history)."""

from __future__ import annotations

import argparse
import getpass
import os

from config.store import SettingsStore


def open_store() -> SettingsStore:
    """This process's store; the secret key first: a missing key is one line before Redis is contacted."""
    from worker.runtime import runtime

    rt = runtime()
    _ = rt.box
    return rt.store


def who(args: argparse.Namespace) -> str:
    """The --by given, else the OS user running the command (an audit trail even from a plain shell)."""
    if args.by:
        return str(args.by)
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container's arbitrary uid)
        return f"uid {os.getuid()}"
