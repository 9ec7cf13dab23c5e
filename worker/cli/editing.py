"""What the commands that write a realm's settings share: the store (the secret key checked first), and
who is running them (kept in the history)."""

from __future__ import annotations

import argparse
import getpass
import os

from config.keys import PRIMARY, SECONDARY
from config.store import SettingsStore


def open_store(args: argparse.Namespace | None = None) -> SettingsStore:
    """This process's store (of the server `args` names); the secret key first: a missing key is one line
    before Redis is contacted."""
    from worker.runtime import runtime

    rt = runtime()
    _ = rt.box
    return rt.store.for_server(server_of(args))


def server_of(args: argparse.Namespace | None) -> str:
    """The realm's server a settings command works on: `--secondary` (the failover server) or the primary."""
    return SECONDARY if args is not None and getattr(args, "secondary", False) else PRIMARY


def who(args: argparse.Namespace) -> str:
    """The --by given, else the OS user running the command (an audit trail even from a plain shell)."""
    if args.by:
        return str(args.by)
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container's arbitrary uid)
        return f"uid {os.getuid()}"
