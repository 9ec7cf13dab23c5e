"""`mailworker settings export` and `settings import`: back up and restore the config store (config/backup.py).

    mailworker settings export --output settings.json        # every realm, history and drafts included
    mailworker settings import settings.json --dry-run       # what it would do; writes nothing
    mailworker settings import settings.json                 # restores the realms the store does not have
    mailworker settings import settings.json --realm acme --replace

Export needs no secret key (nothing is decrypted); import needs the key the secrets were sealed with.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from config.errors import InvalidInput
from worker.cli.common import print_json
from worker.cli.formats import FAILED, OK, iso

# The Unix times of a wipe notice (config/epoch.py record_wipe), printed as ISO 8601 UTC.
WIPE_TIMES = ("lost_epoch_created_at", "noticed_at")

# An export holds every realm's sealed secrets: readable by its owner only, like the key that opens them.
EXPORT_FILE_MODE = 0o600
LARGEST_IMPORT = 64 * 1024 * 1024  # bytes: a settings export is kilobytes; this is never one


def register_backup(settings_commands: Any) -> None:
    """Add `export` and `import` to the `settings` sub-commands (worker/cli/settings_cmd.py calls this)."""
    export = settings_commands.add_parser(
        "export", help="write every realm's settings, history and draft to a JSON file (secrets stay sealed)"
    )
    export.add_argument("--output", "-o", default="-", metavar="FILE",
                        help="file to write (created mode 600; default: stdout)")  # fmt: skip
    export.add_argument("--realm", action="append", default=[], help="only this realm (repeatable)")
    export.set_defaults(handler=handle_export)

    restore = settings_commands.add_parser(
        "import", help="restore realms from an export (the store's own realms are kept unless --replace)"
    )
    restore.add_argument("file", metavar="FILE", help="an export (`-`: stdin)")
    restore.add_argument("--realm", action="append", default=[], help="only this realm (repeatable)")
    restore.add_argument("--replace", action="store_true",
                         help="a realm the store has: save the export's settings as its next version")  # fmt: skip
    restore.add_argument(
        "--dry-run", action="store_true", help="check and say what would happen; write nothing"
    )
    restore.add_argument("--by", default=None, metavar="WHO",
                         help="who imports, kept in the history of replaced realms (default: the OS user)")  # fmt: skip
    restore.add_argument("--json", action="store_true", help="print the report as JSON")
    restore.set_defaults(handler=handle_import)


def handle_export(args: argparse.Namespace) -> int:
    from config.backup import export_settings
    from worker.runtime import runtime

    rt = runtime()  # no key needed: nothing is decrypted
    document = export_settings(rt.redis, rt.keys, args.realm)
    text = json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    if args.output == "-":
        sys.stdout.write(text)
    else:
        descriptor = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, EXPORT_FILE_MODE)
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(text)
    versions = sum(1 + len(r["history"]) for r in document["realms"])
    keys = ", ".join(document["key_ids"]) or "none"
    print(f"exported {len(document['realms'])} realm(s), {versions} version(s) to "
          f"{'stdout' if args.output == '-' else args.output}; secrets sealed with key id(s) {keys}: "
          "keep MAILWORKER_SECRET_KEY apart from this file", file=sys.stderr)  # fmt: skip
    return OK


def read_document(path: str) -> Any:
    """The JSON document in `path` (`-`: stdin); InvalidInput naming the file when it is not one."""
    try:
        if path == "-":
            raw = sys.stdin.buffer.read(LARGEST_IMPORT + 1)
        else:
            with open(path, "rb") as file:
                raw = file.read(LARGEST_IMPORT + 1)
    except OSError as error:
        raise InvalidInput.one("FILE", f"cannot read {path}: {error.strerror}") from None
    if len(raw) > LARGEST_IMPORT:
        raise InvalidInput.one(
            "FILE", f"{path} is larger than {LARGEST_IMPORT // 2**20} MiB: not a settings export"
        )
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as error:
        raise InvalidInput.one("FILE", f"{path} is not JSON ({str(error)[:200]})") from None


def wipe_json(wipe: dict[str, str] | None) -> dict[str, Any] | None:
    """The wipe notice an import cleared, its times as ISO 8601 UTC (Redis keeps them as Unix seconds)."""
    if wipe is None:
        return None
    return {name: _iso_text(value) if name in WIPE_TIMES else value for name, value in wipe.items()}


def _iso_text(value: str) -> str | None:
    try:
        return iso(float(value))
    except (ValueError, OverflowError, OSError):  # not a Unix time: shown as stored
        return value


def handle_import(args: argparse.Namespace) -> int:
    from config.backup import import_settings
    from worker.cli.editing import open_store, who
    from worker.runtime import runtime

    document = read_document(args.file)
    open_store()  # the key first: one line when it is missing
    rt = runtime()
    report = import_settings(
        rt.redis, rt.keys, rt.box, document, realms=args.realm, replace=args.replace, by=who(args),
        history_size=rt.store.history_size, dry_run=args.dry_run,
    )  # fmt: skip
    if args.json:
        wipe_cleared = wipe_json(report.wipe_cleared)
        print_json({"dry_run": args.dry_run, **report.as_json(), "wipe_cleared": wipe_cleared})
        return FAILED if report.unusable else OK
    would = "would be " if args.dry_run else ""
    for realm in report.restored:
        print(f"{realm}: {would}restored as exported")
    for realm, version in report.replaced.items():
        print(f"{realm}: {would}saved as version {version} (the export's settings; history and draft kept)")
    for realm, version in report.skipped.items():
        print(f"{realm}: skipped: the store has it (version {version}); --replace saves the export's on top")
    for why in report.unusable.values():
        print(f"warning: {why}", file=sys.stderr)
    if report.wipe_cleared:
        print(f"the store had lost its data (noticed by {report.wipe_cleared.get('noticed_by')}): the wipe "
              f"notice is {'to be ' if args.dry_run else ''}cleared; mail queued before the wipe stays lost")  # fmt: skip
    if args.dry_run:
        print("dry run: nothing was written")
    return FAILED if report.unusable else OK
