"""`mailworker settings ...`: edit, save, revert, show, history and roll back a realm's SMTP settings.

Also `mailworker secret-key` (a new Fernet key for MAILWORKER_SECRET_KEY) and `mailworker secrets rotate`.
Secrets never come from argv (other users see it in `ps`): the password is read from stdin. Output masks them.
A save prints what it changed; while a draft is pending, a save with options must name it (`--draft ID`,
shown by `set` and `show --draft`), so nobody saves another admin's pending edits unseen.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from typing import Any

import redis

from config.crypto import new_key
from config.errors import ConfigError, InvalidInput, NotFound
from config.names import check_realm
from config.redis import redact_url
from config.store import DraftSettings, SavedSettings
from tasks.views import history_json, iso, pending_changes, settings_json
from worker.cli.common import print_json, table
from worker.cli.editing import open_store, server_of, who
from worker.cli.settings_view import aligned, print_changes, print_saved

Handler = Callable[[argparse.Namespace], int]

# (JSON name, option) of the options that take a value; argparse's dest is the JSON name. Values stay
# strings: the settings model converts them, so a bad `--port x` is reported like any other rule.
VALUE_OPTIONS = [
    ("from", "--from", "From address, e.g. noreply@acme.example"),
    ("from_display_name", "--from-display-name", "display name in From"),
    ("reply_to", "--reply-to", "Reply-To address"),
    ("reply_to_display_name", "--reply-to-display-name", "display name in Reply-To"),
    ("envelope_from", "--envelope-from", "bounce address (MAIL FROM / Return-Path)"),
    ("host", "--host", "SMTP server host name or IP address"),
    ("port", "--port", "SMTP port (25, 465 with --ssl, 587 with --starttls)"),
    ("auth_type", "--auth-type", "password or xoauth2"),
    ("username", "--username", "login name"),
    ("connect_timeout", "--connect-timeout", "seconds to connect"),
    ("timeout", "--timeout", "seconds per SMTP command"),
    ("data_timeout", "--data-timeout", "seconds to wait for the reply to the end of a message (default 600)"),
    ("rate_limit_per_second", "--rate-limit-per-second", "provider limit, across all workers"),
    ("rate_limit_per_hour", "--rate-limit-per-hour", "provider limit, across all workers"),
    ("notify_events", "--notify-events", "comma-separated IAM event types that send a notice"),
    ("oauth_token_url", "--oauth-token-url", "XOAUTH2: token endpoint (https://...)"),
    ("oauth_client_id", "--oauth-client-id", "XOAUTH2: client id"),
    ("oauth_scope", "--oauth-scope", "XOAUTH2: scope"),
    ("iam_url", "--iam-url", "user look-ups: the IAM's base URL, e.g. https://iam.acme.example"),
    ("iam_realm", "--iam-realm", "user look-ups: the IAM realm of the users (default: --realm)"),
    ("iam_client_id", "--iam-client-id", "user look-ups: the service-account client (view-users)"),
]
SWITCH_OPTIONS = [
    ("ssl", "--ssl", "implicit TLS (usually port 465)"),
    ("starttls", "--starttls", "StartTLS (usually port 587); never falls back to plaintext"),
    ("auth", "--auth", "log in to the server"),
    ("allow_utf8", "--allow-utf8", "allow non-ASCII local parts (SMTPUTF8)"),
    ("verify_tls", "--verify-tls", "verify the server's certificate and host name (default on)"),
    ("verp", "--verp", "VERP: the envelope sender names the job, so bounces map to it (docs/bounces.md)"),
]
SECRET_OPTIONS = [
    ("password", "--password-stdin", "read the password from stdin (one trailing newline is dropped)"),
    ("oauth_client_secret", "--oauth-client-secret-stdin", "read the XOAUTH2 client secret from stdin"),
    (
        "iam_client_secret",
        "--iam-client-secret-stdin",
        "read the IAM client secret (user look-ups) from stdin",
    ),
]


def register(subparsers: Any) -> None:
    settings = subparsers.add_parser("settings", help="a realm's SMTP settings: edit, save, show, history")
    commands = settings.add_subparsers(dest="settings_command", required=True)
    # Other modules add commands to it (`settings test`, `export`, `import`): see the end of this function.
    settings.set_defaults(settings_commands=commands)

    edit = commands.add_parser("set", help="edit the draft (starts from the saved settings)")
    _add_realm(edit)
    _add_field_options(edit)
    _add_json(edit)
    edit.set_defaults(handler=handle_set)

    save = commands.add_parser("save", help="apply options to the draft, validate, save as the next version")
    _add_realm(save)
    _add_field_options(save)
    save.add_argument(
        "--expect-version", type=int, help="refuse to save unless the saved version is this one"
    )
    save.add_argument(
        "--draft",
        metavar="ID",
        dest="draft_id",
        help="the pending draft you reviewed (from `set` or `show --draft`): save it, with your options "
        "applied on top; needed for options while a draft is pending. Without options the draft is saved "
        "as it is",
    )
    save.add_argument("--note", help="a note kept with this version in the history")
    _add_by(save)
    _add_json(save)
    save.set_defaults(handler=handle_save)

    revert = commands.add_parser("revert", help="discard the draft")
    _add_realm(revert)
    revert.set_defaults(handler=handle_revert)

    show = commands.add_parser("show", help="the saved settings (or the draft), password masked")
    _add_realm(show)
    show.add_argument("--draft", action="store_true", help="show the draft instead of the saved settings")
    _add_json(show)
    show.set_defaults(handler=handle_show)

    history = commands.add_parser("history", help="the last saved versions, newest first")
    _add_realm(history)
    _add_json(history)
    history.set_defaults(handler=handle_history)

    rollback = commands.add_parser("rollback", help="save an earlier version again, as a new version")
    _add_realm(rollback)
    rollback.add_argument("--to", type=int, required=True, metavar="VERSION", dest="to_version")
    _add_by(rollback)
    _add_json(rollback)
    rollback.set_defaults(handler=handle_rollback)

    from worker.cli.backup_cmd import register_backup
    from worker.cli.settings_test_cmd import register_test

    register_test(commands)
    register_backup(commands)

    secret_key = subparsers.add_parser("secret-key", help="print a new Fernet key for MAILWORKER_SECRET_KEY")
    secret_key.set_defaults(handler=handle_secret_key)

    secrets = subparsers.add_parser("secrets", help="stored secrets")
    secret_commands = secrets.add_subparsers(dest="secrets_command", required=True)
    rotate = secret_commands.add_parser("rotate", help="re-encrypt every stored secret with the first key")
    rotate.set_defaults(handler=handle_rotate)


def _add_realm(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--realm", required=True, help="realm name")
    parser.add_argument("--secondary", action="store_true",
                        help="the realm's secondary SMTP server (failover, docs/delivery.md) instead of its primary")  # fmt: skip


def _add_by(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--by", default=None, metavar="WHO",
                        help="who saves, kept in the history (default: the user running the command)")  # fmt: skip


def _add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON (secrets masked)")


def _add_field_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("fields (an empty value, e.g. --reply-to '', clears a field)")
    for name, option, help_text in VALUE_OPTIONS:
        group.add_argument(option, dest=name, default=None, metavar="VALUE", help=help_text)
    for name, option, help_text in SWITCH_OPTIONS:
        group.add_argument(
            option, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text
        )
    secrets = group.add_mutually_exclusive_group()
    for name, option, help_text in SECRET_OPTIONS:
        secrets.add_argument(option, dest=f"{name}_stdin", action="store_true", help=help_text)
    secrets.add_argument("--clear-password", action="store_true", help="forget the stored password")


# ---- turning options into changes ---------------------------------------------------------------------


def changes_from_args(args: argparse.Namespace, stdin: Any = None) -> dict[str, Any]:
    """Only the options actually given; an empty value becomes None (back to the default)."""
    changes: dict[str, Any] = {}
    for name, _, _ in VALUE_OPTIONS:
        value = getattr(args, name)
        if value is None:
            continue
        if value == "":
            changes[name] = None
        elif name == "notify_events":
            changes[name] = [part.strip() for part in value.split(",") if part.strip()]
        else:
            changes[name] = value
    for name, _, _ in SWITCH_OPTIONS:
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    if args.clear_password:
        changes["password"] = None
    for name, option, _ in SECRET_OPTIONS:
        if getattr(args, f"{name}_stdin"):
            changes[name] = read_secret(stdin if stdin is not None else sys.stdin, name, option)
    return changes


def read_secret(stream: Any, name: str, option: str) -> str:
    """The whole of stdin minus one trailing newline (what `echo` or a here-string adds)."""
    value = stream.read()
    if value.endswith("\r\n"):
        value = value[:-2]
    elif value.endswith("\n"):
        value = value[:-1]
    if not value:
        raise InvalidInput.one(name, f"{option} read nothing from stdin: pipe the value in")
    return str(value)


# ---- handlers -----------------------------------------------------------------------------------------


def store_errors(handler: Handler) -> Handler:
    """A Redis failure mid-command becomes one line naming the variable to check."""

    @functools.wraps(handler)
    def wrapper(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except redis.RedisError as error:
            from worker.runtime import runtime

            url = redact_url(runtime().settings.store_url)
            raise ConfigError(f"MAILWORKER_STORE_URL: Redis at {url} failed: {error}") from None

    return wrapper


@store_errors
def handle_set(args: argparse.Namespace) -> int:
    changes = changes_from_args(args)
    if not changes:
        raise InvalidInput.one("", "nothing to change: give at least one field option (see --help)")
    store = open_store(args)
    draft = store.set_draft(args.realm, changes)
    if args.json:
        print_json({**settings_json(draft.settings, "draft", draft.base_version), "draft_id": draft.draft_id})
        return 0
    since = f"from version {draft.base_version}" if draft.base_version else "nothing saved yet"
    print(
        f"draft {draft.draft_id} of {args.realm} updated ({since}); test it with `mailworker settings test "
        f"--realm {args.realm}`, then `mailworker settings save --realm {args.realm} --draft {draft.draft_id}`"
    )
    print_changes("pending changes", pending_changes(store, draft))
    return 0


@store_errors
def handle_save(args: argparse.Namespace) -> int:
    store = open_store(args)
    changes = changes_from_args(args)
    if not changes and store.draft(args.realm, lenient=True) is None and store.version(args.realm) > 0:
        raise InvalidInput.one(
            "", f"nothing to save: {args.realm} has no draft and no field option was given (see --help)"
        )
    saved = store.save(
        args.realm, changes, expected_version=args.expect_version, draft_id=args.draft_id, note=args.note,
        by=who(args),
    )  # fmt: skip
    print_saved(saved, args.json)
    return 0


@store_errors
def handle_revert(args: argparse.Namespace) -> int:
    from worker.runtime import runtime

    if (
        runtime().store.for_server(server_of(args)).revert(check_realm(args.realm))
    ):  # deletes the draft: no secret key needed
        print(f"draft of {args.realm} discarded")
    else:
        print(f"{args.realm} has no draft: nothing to revert")
    return 0


@store_errors
def handle_show(args: argparse.Namespace) -> int:
    store = open_store(args)
    # Lenient: settings whose stored secret cannot be used any more are shown, with the reason.
    shown_entry: DraftSettings | SavedSettings | None
    if args.draft:
        shown_entry = store.draft(args.realm, lenient=True)
        if shown_entry is None:
            raise _no_draft(args.realm)
        data = {**settings_json(shown_entry.settings, "draft", shown_entry.base_version),
                "draft_id": shown_entry.draft_id}  # fmt: skip
    else:
        shown_entry = store.saved(args.realm, lenient=True)
        if shown_entry is None:
            store.effective(args.realm, use_draft=False)  # raises NotFound, saying what to do
            raise _no_draft(args.realm)
        data = settings_json(shown_entry.settings, "saved", shown_entry.version)
    if shown_entry.unusable:
        data["unusable"] = dict(shown_entry.unusable)
    if args.json:
        print_json(data)
        return 0
    print(aligned({k: v for k, v in data.items() if k != "unusable"}))
    for name, why in shown_entry.unusable.items():
        print(f"warning: the stored {name} cannot be used: {why}; enter it again")
    if isinstance(shown_entry, DraftSettings):
        print_changes("pending changes", pending_changes(store, shown_entry))
    else:
        draft = store.draft(args.realm, lenient=True)
        if draft is not None:
            print(
                f"(draft {draft.draft_id} is pending: `mailworker settings show --realm {args.realm} --draft`)"
            )
    return 0


@store_errors
def handle_history(args: argparse.Namespace) -> int:
    from worker.runtime import runtime

    # Read as stored, nothing decrypted: history needs no MAILWORKER_SECRET_KEY.
    versions = runtime().store.for_server(server_of(args)).public_history(check_realm(args.realm))
    if args.json:
        print_json([history_json(version) for version in versions])
        return 0
    if not versions:
        print(f"{args.realm} has no saved versions")
        return 0
    rows = [
        [str(v["version"]), iso(v["saved_at"]) or "-", str(v["settings"].get("host", "")),
         str(v["settings"].get("port", "")), str(v["settings"].get("from", "")), v["by"] or "", v["note"] or ""]
        for v in versions
    ]  # fmt: skip
    print(table(rows, ["version", "saved_at", "host", "port", "from", "by", "note"]))
    return 0


@store_errors
def handle_rollback(args: argparse.Namespace) -> int:
    print_saved(open_store(args).rollback(args.realm, args.to_version, by=who(args)), args.json)
    return 0


def handle_secret_key(args: argparse.Namespace) -> int:
    print(new_key())
    return 0


@store_errors
def handle_rotate(args: argparse.Namespace) -> int:
    from worker.runtime import runtime

    rotation = open_store(args).rotate_secrets()
    hooks, hook_problems = runtime().webhooks.reseal()  # the webhooks' signing secrets, sealed the same way
    migrated = f" ({rotation.migrated} of them from the old unbound format)" if rotation.migrated else ""
    print(
        f"re-encrypted {rotation.resealed + hooks} stored secret(s) with the first key of MAILWORKER_SECRET_KEY{migrated}"
    )
    for problem in [*rotation.skipped, *hook_problems]:
        print(f"not re-encrypted: {problem}")
    return 1 if rotation.skipped or hook_problems else 0


# ---- output -------------------------------------------------------------------------------------------


def _no_draft(realm: str) -> NotFound:
    return NotFound(f"{realm} has no draft: start one with `mailworker settings set --realm {realm} ...`")
