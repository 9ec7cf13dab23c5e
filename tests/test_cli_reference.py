"""docs/cli.md against the `mailworker` command: the exit-code table, a section per command, the secret key
table, and every JSON shape checked on what the real command prints about real data.

The page's format, as these tests read it: under `## Commands`, one `### `command`` section per command;
a section's JSON shape is its table headed `| key | type | meaning |`, one row per key path (`a.b`, `a[]`,
`a.*`, `[]`), the type one of TYPES, with "or null" and ", optional"; a type linking to another section
(`object, as in [`dead show`](#dead-show)`) takes that section's shape; a key cell linking to
settings.md#fields stands for every field of the settings table there. ```json and ```jsonl blocks are
examples, checked against their section's shape like real output.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.test_docs import find_table, plain, spans

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "cli.md"
SETTINGS_PAGE = ROOT / "docs" / "settings.md"
SHAPE_HEADER = ["key", "type", "meaning"]
TYPES = ("string", "integer", "number", "boolean", "time", "object", "array", "any")
ISO_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z\Z")
CONTEXT = {"user": {"username": "alice"}, "link": "https://iam.example.com/r?k=1", "link_expiration": 30}

# ---- reading the page ---------------------------------------------------------------------------------------

_FENCE = re.compile(r"^\s*(```|~~~)\s*([\w-]*)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*$")
_CELL_SPLIT = re.compile(r"(?<!\\)\|")
_SEPARATOR = re.compile(r"^\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*$")
_LINK = re.compile(r"\[([^\]]*)\]\(([^)\s]+)\)")


@dataclass
class Section:
    command: str
    line: int
    lines: list[tuple[int, str]] = field(default_factory=list)  # outside fences
    blocks: list[tuple[int, str, list[str]]] = field(default_factory=list)  # (line, language, lines)


def _cells(line: str) -> list[str]:
    body = line.strip().removeprefix("|")
    if body.endswith("|") and not body.endswith("\\|"):
        body = body[:-1]
    return [cell.strip().replace("\\|", "|") for cell in _CELL_SPLIT.split(body)]


def read_sections(path: Path = PAGE) -> dict[str, Section]:
    """The `### `command`` sections under `## Commands`, by command."""
    sections: dict[str, Section] = {}
    current: Section | None = None
    in_commands = False
    fence: tuple[int, str, list[str]] | None = None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if match := _FENCE.match(line):
            if fence is None:
                fence = (number, match.group(2), [])
            else:
                if current is not None:
                    current.blocks.append(fence)
                fence = None
            continue
        if fence is not None:
            fence[2].append(line)
            continue
        if heading := _HEADING.match(line):
            level, text = len(heading.group(1)), heading.group(2)
            if level <= 2:
                in_commands = text == "Commands"
                current = None
                continue
            if level == 3 and in_commands:
                names = spans(text)
                assert len(names) == 1 and text == f"`{names[0]}`", (
                    f"docs/cli.md:{number}: a command's heading is the command in code marks, not {text!r}"
                )
                assert names[0] not in sections, f"docs/cli.md:{number}: a second section for {names[0]!r}"
                current = sections[names[0]] = Section(names[0], number)
                continue
        if current is not None:
            current.lines.append((number, line))
    return sections


def section_tables(section: Section) -> list[tuple[int, list[str], list[list[str]]]]:
    """(line, header, rows) of each table of the section."""
    found, block = [], []
    for number, line in [*section.lines, (-1, "")]:
        if line.lstrip().startswith("|"):
            block.append((number, line))
            continue
        if len(block) >= 2 and _SEPARATOR.match(block[1][1].strip()):
            found.append((block[0][0], _cells(block[0][1]), [_cells(text) for _, text in block[2:]]))
        block = []
    return found


@dataclass(frozen=True)
class Key:
    path: tuple[str, ...]  # ("dead_letters", "[]"), ("last_hour", "*", "sent"), ("[]", "version")
    base: str
    nullable: bool
    optional: bool
    ref: str | None  # the command whose shape this object has
    where: str


def split_path(text: str) -> tuple[str, ...]:
    return tuple(re.findall(r"\[\]|[^.\[\]]+", text))


def settings_fields() -> list[str]:
    table = find_table(SETTINGS_PAGE, ["JSON name", "CLI option", "default", "rule"])
    return [spans(row[0])[0] for row in table.rows]


def parse_type(cell: str, anchors: dict[str, str], where: str) -> tuple[str, bool, bool, str | None]:
    ref = None
    for _text, target in _LINK.findall(cell):
        if target.startswith("#"):
            assert target[1:] in anchors, f"{where}: the type links to #{target[1:]}, no command's section"
            ref = anchors[target[1:]]
    text = plain(_LINK.sub(r"\1", cell)).lower()
    head, *rest = [part.strip() for part in text.split(",")]
    optional = "optional" in rest
    nullable = head.endswith(" or null")
    base = head.removesuffix(" or null")
    assert base in TYPES, f"{where}: type {cell!r}: {base!r} is none of {TYPES}"
    return base, nullable, optional, ref


def slug(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def read_shapes(sections: dict[str, Section]) -> dict[str, dict[tuple[str, ...], Key]]:
    """Each command's documented JSON shape: key path -> Key."""
    anchors = {slug(f"`{command}`"): command for command in sections}
    shapes: dict[str, dict[tuple[str, ...], Key]] = {}
    for command, section in sections.items():
        shape_tables = [t for t in section_tables(section) if t[1] == SHAPE_HEADER]
        assert len(shape_tables) <= 1, f"docs/cli.md: `{command}` has {len(shape_tables)} JSON shape tables"
        if not shape_tables:
            continue
        line, _header, rows = shape_tables[0]
        keys: dict[tuple[str, ...], Key] = {}
        for index, row in enumerate(rows):
            where = f"docs/cli.md:{line + 2 + index}"
            assert len(row) == 3, f"{where}: {len(row)} cells, the header has 3"
            base, nullable, optional, ref = parse_type(row[1], anchors, where)
            names = spans(row[0])
            if not names and "settings.md#fields" in row[0]:
                for name in settings_fields():
                    keys[(name,)] = Key((name,), base, nullable, optional, ref, where)
                continue
            assert len(names) == 1, f"{where}: the key cell should be one `path`, not {row[0]!r}"
            path = split_path(names[0])
            assert path and path not in keys, f"{where}: `{names[0]}` is empty or listed twice"
            assert plain(row[2]), f"{where}: `{names[0]}` has no meaning"
            keys[path] = Key(path, base, nullable, optional, ref, where)
        for path, key in keys.items():
            parent = path[:-1]
            if parent:
                assert parent in keys, f"{key.where}: `{'.'.join(path)}` has no row for its parent"
                wanted = "array" if path[-1] == "[]" else "object"
                assert keys[parent].base == wanted, (
                    f"{key.where}: `{'.'.join(path)}` needs its parent to be an {wanted}"
                )
            siblings = {other[-1] for other in keys if other[:-1] == parent}
            assert not ({"*", "[]"} & siblings) or len(siblings) == 1, (
                f"{key.where}: a `*` or `[]` row cannot have named siblings ({sorted(siblings)})"
            )
        shapes[command] = keys
    return shapes


# ---- checking a JSON value against a shape --------------------------------------------------------------------


def type_problem(key: Key, value: Any, now: float) -> str | None:
    if value is None:
        return None if key.nullable or key.base == "any" else "is null"
    ok = {
        "string": isinstance(value, str),
        "integer": isinstance(value, int) and not isinstance(value, bool),
        "number": isinstance(value, int | float) and not isinstance(value, bool),
        "boolean": isinstance(value, bool),
        "time": isinstance(value, str) and bool(ISO_UTC.match(value)),
        "object": isinstance(value, dict),
        "array": isinstance(value, list),
        "any": True,
    }[key.base]
    if not ok:
        return f"is {json.dumps(value)[:80]}, not a {key.base}"
    if key.base == "time":
        when = dt.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC).timestamp()
        if not now - 86_400 < when < now + 60:  # this test's data was made minutes ago
            return f"is {value}: not a time of this test run"
    return None


def shape_problems(
    value: Any, shapes: dict[str, dict[tuple[str, ...], Key]], command: str, path: tuple[str, ...] = (),
    shown: str = "",
) -> list[str]:  # fmt: skip
    """What in `value` (at `path` of `command`'s shape) the shape does not say: keys, types, times."""
    keys = shapes[command]
    children = {p[-1]: k for p, k in keys.items() if p[:-1] == path}
    if not children:
        return []
    now = time.time()
    problems: list[str] = []
    items: list[tuple[str, Key, Any]] = []
    if "[]" in children:
        if not isinstance(value, list):
            return [f"{shown or 'the output'} is not an array"]
        items = [(f"{shown}[{i}]", children["[]"], item) for i, item in enumerate(value)]
    elif not isinstance(value, dict):
        return [f"{shown or 'the output'} is not an object"]
    elif "*" in children:
        items = [(f"{shown}.{name}".lstrip("."), children["*"], item) for name, item in value.items()]
    else:
        for name in sorted(set(value) - set(children)):
            problems.append(f"{shown}.{name}: a key docs/cli.md does not list for `{command}`".lstrip("."))
        for name, key in children.items():
            if name not in value and not key.optional:
                problems.append(f"{shown}.{name}: missing, and not optional ({key.where})".lstrip("."))
        items = [(f"{shown}.{name}".lstrip("."), children[name], item) for name, item in value.items()
                 if name in children]  # fmt: skip
    for where, key, item in items:
        problem = type_problem(key, item, now)
        if problem:
            problems.append(f"{where} {problem} ({key.where})")
        elif item is not None and key.ref is not None:
            problems += shape_problems(item, shapes, key.ref, (), where)
        elif item is not None:
            problems += shape_problems(item, shapes, command, key.path, where)
    return problems


# ---- the parser -----------------------------------------------------------------------------------------------


def parser_commands() -> list[str]:
    """Every command path the parser knows, e.g. "settings set", "status"; plus `job`'s own words."""
    from worker.cli import build_parser

    found: list[str] = []

    def walk(parser: argparse.ArgumentParser, path: list[str]) -> None:
        groups = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not groups:
            found.append(" ".join(path))
        for group in groups:
            for name, child in group.choices.items():
                walk(child, [*path, name])

    walk(build_parser(), [])
    return found


def job_words() -> list[str]:
    """`job cancel`, `job list`: words `job` takes in place of a job id (its positional's help names them)."""
    from worker.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    job_id = next(a for a in commands["job"]._actions if a.dest == "job_id")
    return [f"job {word}" for word in spans(job_id.help or "")]


def all_commands() -> set[str]:
    return set(parser_commands()) | set(job_words())


SECTIONS = read_sections()
SHAPES = read_shapes(SECTIONS)


# ---- the page against the code --------------------------------------------------------------------------------


def exit_table() -> dict[int, list[str]]:
    """code -> the commands its row names ("every command" as "*")."""
    table = find_table(PAGE, ["code", "meaning", "commands"])
    rows: dict[int, list[str]] = {}
    for index, row in enumerate(table.rows):
        codes = spans(row[0])
        assert len(codes) == 1 and codes[0].isdigit(), f"{table.where(index)}: the code cell is {row[0]!r}"
        code = int(codes[0])
        assert code not in rows, f"{table.where(index)}: code {code} appears twice"
        named = [span for span in spans(row[2]) if not span.startswith("-")]
        rows[code] = (["*"] if "every command" in row[2] else []) + named
        assert plain(row[1]), f"{table.where(index)}: code {code} has no meaning"
    return rows


def test_the_exit_code_table_is_the_constants_and_the_docstring_of_formats() -> None:
    from worker.cli import formats

    constants = {name: value for name, value in vars(formats).items()
                 if name.isupper() and isinstance(value, int) and not isinstance(value, bool)}  # fmt: skip
    docstring = {int(code) for code in re.findall(r"^ {4}(\d+) {2,}\S", formats.__doc__ or "", re.M)}
    documented = exit_table()
    assert set(documented) == set(constants.values()), (
        f"docs/cli.md lists exit codes {sorted(documented)}; worker/cli/formats.py defines {constants}"
    )
    assert set(documented) == docstring, f"the formats.py docstring lists {sorted(docstring)}"
    commands = all_commands()
    for code, named in documented.items():
        assert named, f"docs/cli.md: exit code {code} names no command"
        unknown = [name for name in named if name != "*" and name not in commands]
        assert not unknown, f"docs/cli.md: exit code {code} names {unknown}, which are no commands"


def test_every_command_has_a_section_and_every_section_is_a_command() -> None:
    commands = all_commands()
    assert {"settings set", "status", "job list", "dead purge"} <= commands  # the walk found the tree
    missing = sorted(commands - set(SECTIONS))
    strays = sorted(set(SECTIONS) - commands)
    assert not missing, f"docs/cli.md has no `### `command`` section for {missing}"
    assert not strays, f"docs/cli.md has sections for {strays}, which the parser does not know"
    assert "status" in {
        slug(f"`{command}`") for command in SECTIONS
    }  # docs/operations.md links cli.md#status


def test_every_command_with_json_output_has_a_shape() -> None:
    from worker.cli import build_parser

    with_json = set()
    for command in parser_commands():
        parser = build_parser()
        for word in command.split():
            parser = parser._subparsers._group_actions[0].choices[word]
        if any("--json" in action.option_strings for action in parser._actions):
            with_json.add(command)
    with_json |= {"job list", "settings export"}  # `job list --json`; export always prints JSON
    assert not sorted(with_json - set(SHAPES)), (
        f"no JSON shape in docs/cli.md for {sorted(with_json - set(SHAPES))}"
    )
    assert not sorted(set(SHAPES) - with_json), (
        f"JSON shapes for commands without JSON: {set(SHAPES) - with_json}"
    )


def test_the_status_verdicts_are_the_exit_codes_status_gives() -> None:
    from tasks.status import DELIVERED, NOT_DELIVERED
    from worker.cli.ops_cmd import status_exit

    tables = [t for t in section_tables(SECTIONS["status"]) if t[1] == ["`status`", "exit"]]
    assert len(tables) == 1, "docs/cli.md: `status` should have one table | `status` | exit |"
    line, _header, rows = tables[0]
    by_code: dict[int, set[str]] = {}
    for index, row in enumerate(rows):
        code = int(row[1])
        for status in spans(row[0]):
            info = {"status": status, **({"known": False} if status.startswith("unknown") else {})}
            assert status_exit(info) == code, (
                f"docs/cli.md:{line + 2 + index}: `{status}` exits {status_exit(info)}"
            )
            by_code.setdefault(code, set()).add(status)
    assert by_code[0] == set(DELIVERED) and by_code[1] == set(NOT_DELIVERED), by_code
    assert set(by_code) == {0, 1, 3, 4}


def test_the_type_table_is_the_types_the_shapes_use() -> None:
    table = find_table(PAGE, ["type", "the value"])
    assert [plain(row[0]) for row in table.rows] == list(TYPES)


def test_the_secret_key_table_names_every_command_once() -> None:
    table = find_table(PAGE, ["command", "`MAILWORKER_SECRET_KEY`"])
    named = [" ".join(spans(row[0])) for row in table.rows]
    assert sorted(named) == sorted(all_commands()), "the secret key table should list every command once"
    assert {plain(row[1]) for row in table.rows} <= {"needed", "not needed", "checked when set"}


def test_the_examples_have_the_documented_shapes() -> None:
    checked = 0
    problems: list[str] = []
    for command, section in SECTIONS.items():
        for line, language, lines in section.blocks:
            if language not in ("json", "jsonl"):
                continue
            assert command in SHAPES, f"docs/cli.md:{line}: a JSON example in `{command}`, which has no shape"
            documents = (
                [json.loads("\n".join(lines))] if language == "json" else [json.loads(x) for x in lines]
            )
            for document in documents:
                checked += 1
                problems += [f"docs/cli.md:{line} ({command}): {p}" for p in shape_problems(
                    document, SHAPES, command, (), "")]  # fmt: skip
    assert checked >= 10, f"only {checked} JSON examples in docs/cli.md"
    # The examples' times were real once: the window of type_problem does not apply to them.
    problems = [p for p in problems if "not a time of this test run" not in p]
    assert not problems, "\n".join(problems)


def test_a_shape_check_can_fail() -> None:
    """The checker itself: an extra key, a missing one, a Unix time and a wrong type are each reported."""
    good = {"job_id": "j", "realm": "r", "template": "t", "to": "a@example.com", "reason": "permanent",
            "error": "550", "smtp_code": None, "attempts": 1, "task": "mail.send", "first_attempt_at": None,
            "died_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}  # fmt: skip
    assert shape_problems(good, SHAPES, "dead show") == []
    for bad, expected in (({**good, "extra": 1}, "extra: a key"), ({k: v for k, v in good.items() if k != "to"},
                          "to: missing"), ({**good, "died_at": time.time()}, "died_at is"),
                          ({**good, "attempts": "1"}, "attempts is")):  # fmt: skip
        assert any(expected in p for p in shape_problems(bad, SHAPES, "dead show")), expected
    listing = {"dead_letters": [{**good, "died_at": "2026-11-30 10:05:26"}], "next_after": None}
    assert any("dead_letters[0].died_at is" in p for p in shape_problems(listing, SHAPES, "dead list"))


# ---- the real command on real data ----------------------------------------------------------------------------


@dataclass
class Run:
    command: str  # the documented command it exercises
    argv: list[str]
    code: int  # the exit code it must end with
    json: str | None = None  # "json", "jsonl" or None: what stdout holds
    key: bool = True  # run with MAILWORKER_SECRET_KEY
    prefix: str | None = None  # another MAILWORKER_KEY_PREFIX
    result: subprocess.CompletedProcess[str] | None = None

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        if not self.key:
            env.pop("MAILWORKER_SECRET_KEY", None)
            env.pop("MAILWORKER_SECRET_KEY_FILE", None)
        if self.prefix:
            env["MAILWORKER_KEY_PREFIX"] = self.prefix
        return env

    def go(self) -> Run:
        self.result = subprocess.run([sys.executable, "-m", "worker.cli", *self.argv], cwd=ROOT,
                                     env=self.environment(), capture_output=True, text=True, timeout=60)  # fmt: skip
        return self

    def said(self) -> str:
        assert self.result is not None
        return (
            f"`mailworker {' '.join(self.argv)}` exit {self.result.returncode}: {self.result.stderr[-600:]}"
        )


def run_all(runs: list[Run]) -> list[Run]:
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(Run.go, runs))


def key_runs(data: dict[str, Any]) -> dict[str, Run]:
    """Per command: a run that shows it needs the key (without it: the key's error), or not (runs without)."""
    realm, export = data["realm"], data["export"]
    needed = {
        "settings set": ["settings", "set", "--realm", realm, "--timeout", "30"],
        "settings save": ["settings", "save", "--realm", realm, "--note", "x"],
        "settings show": ["settings", "show", "--realm", realm],
        "settings rollback": ["settings", "rollback", "--realm", realm, "--to", "1"],
        "settings test": ["settings", "test", "--realm", realm],
        "settings import": ["settings", "import", export, "--dry-run"],
        "webhook add": ["webhook", "add", "--realm", realm, "--url", data["hook_url"], "--events", "sent"],
        "webhook test": ["webhook", "test", data["webhook"]],
        "secrets rotate": ["secrets", "rotate"],
        "worker": ["worker", "--queues", "control", "--pool", "solo"],
        "bounces": ["bounces", "--port", str(data["busy_port"])],  # the key is read before it listens
    }
    runs = {command: Run(command, argv, 1, key=False) for command, argv in needed.items()}
    runs.update({
        "settings revert": Run("settings revert", ["settings", "revert", "--realm", realm], 0, key=False),
        "secret-key": Run("secret-key", ["secret-key"], 0, key=False),
        "health": Run("health", ["health"], 0, key=False),
        "job cancel": Run("job cancel", ["job", "cancel", data["bulk_done"]], 0, key=False),
        "ingest": Run("ingest", ["ingest", "--once"], 0, key=False),
        "suppression list": Run("suppression list", ["suppression", "list", "--realm", realm], 0, key=False),
        "suppression remove": Run("suppression remove", ["suppression", "remove", "--realm", realm,
                                                         f"nobody-{realm}@example.com"], 3, key=False),
        # Without the key it starts: here on a port another socket holds, so it stops at once, naming it.
        "serve": Run("serve", ["serve", "--port", str(data["busy_port"])], 1, key=False),
    })  # fmt: skip
    return runs


@pytest.fixture(scope="module")
def data(celery_worker: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A realm with a sent and a dead-lettered job, a done and a failed bulk job, a queued job id, a draft,
    an export file, and a second store (another key prefix) that lost its data: all on 127.0.0.1."""
    from config.epoch import Epoch, record_wipe
    from config.keys import Keys
    from tasks import api
    from tests.conftest import SESSION_PREFIX
    from tests.support.smtp_server import SmtpTestServer
    from tests.support.webhook_receiver import WebhookReceiver
    from worker.runtime import runtime

    rt = runtime()
    tag = uuid.uuid4().hex[:8]
    realm, failing = f"clidocs-{tag}", f"clidocs-auth-{tag}"
    with (
        SmtpTestServer() as server,
        SmtpTestServer(tls="starttls", require_auth=("mailer", "right")) as auth,
        WebhookReceiver() as hooks,
    ):
        webhook, _ = rt.webhooks.add(realm, hooks.url, ["dead_lettered"])
        removable, _ = rt.webhooks.add(realm, hooks.url, ["dead_lettered"])
        rt.store.save(realm, server.settings_dict(), note="first", by="clidocs")
        rt.store.save(failing, auth.settings_dict(password="wrong"))
        gone = f"gone-{tag}@example.com"
        server.reject_recipient(gone)
        sent = api.send_email(realm, "password-reset", f"ok-{tag}@example.com", context=CONTEXT)
        dead = api.send_email(realm, "password-reset", gone, context=CONTEXT)
        notice = {"notice": {"subject": "S", "body": "B"}}
        bulk_done = api.send_bulk(
            realm, "notice", [f"b{i}-{tag}@example.com" for i in range(2)], context=notice
        )
        bulk_failed = api.send_bulk(
            failing, "notice", [f"f{i}-{tag}@example.com" for i in range(2)], context=notice
        )
        assert api.wait_for_result(sent)["status"] == "sent"
        assert api.wait_for_result(dead)["status"] == "dead-lettered"
        assert api.wait_for_bulk(bulk_done)["state"] == "done"
        assert api.wait_for_bulk(bulk_failed)["state"] == "failed"
        queued = f"clidocs-queued-{tag}"  # published, not taken yet: what the pending ledger says
        rt.redis.set(
            rt.keys.pending_job(queued), json.dumps({"task": "mail.send", "args": [], "queue": "x"}), ex=300
        )
        export = str(tmp_path_factory.mktemp("clidocs") / "export.json")
        done = Run("settings export", ["settings", "export", "--realm", realm, "--output", export], 0).go()
        assert done.result is not None and done.result.returncode == 0, done.said()
        wiped = f"{SESSION_PREFIX}:t-{tag}"  # a store that lost its data: a worker noticed
        record_wipe(rt.redis, Keys(wiped), Epoch("lost-epoch", time.time() - 60), "transactional@clidocs")
        loading = f"bulk-clidocs-{tag}"  # a bulk job that never ends: to interrupt a --watch
        rt.bulk_jobs.create(
            loading, realm=realm, template="notice", locale=None, context=notice, chunk_size=10
        )
        # A suppressed address, and a bounce the receiver kept (`suppression list`, `bounces --unmapped`).
        rt.suppressions.add(
            realm, gone, "hard_bounce", job_id=dead, status="5.1.1", diagnostic="smtp; 550 5.1.1"
        )
        from worker.bounces.record import Realms

        rt.bounces.keep(
            Realms((realm,), {}), f"noreply@{realm}.example", b"Subject: junk\r\n\r\nx\r\n", "test"
        )
        busy = socket.socket()  # a port on 127.0.0.1 someone holds: `serve` cannot have it
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        yield {"realm": realm, "failing": failing, "sent": sent, "dead": dead, "bulk_done": bulk_done,
               "bulk_failed": bulk_failed, "queued": queued, "export": export, "wiped": wiped, "loading": loading,
               "busy_port": busy.getsockname()[1], "hook_url": hooks.url, "webhook": webhook.id,
               "removable": removable.id}  # fmt: skip
        busy.close()
        rt.redis.delete(rt.keys.pending_job(queued), rt.keys.bulk_job(loading))
        for endpoint in rt.webhooks.list(realm):  # the receiver is gone: nothing left to retry
            rt.webhooks.remove(endpoint.id)


@pytest.fixture(scope="module")
def runs(data: dict[str, Any]) -> list[Run]:
    """Every run, done: the read-only ones at once, then the ones that change the realm, in order."""
    realm, failing = data["realm"], data["failing"]
    first = [
        Run("status", ["status", data["sent"], "--json"], 0, "json", key=False),
        Run("status", ["status", data["dead"], "--json"], 1, "json", key=False),
        Run("status", ["status", f"no-such-{realm}", "--json"], 3, "json", key=False),
        Run("status", ["status", data["queued"], "--json"], 4, "json", key=False),
        Run("job", ["job", data["bulk_done"], "--json"], 0, "json", key=False),
        Run("job", ["job", data["bulk_done"], "--watch", "--json"], 0, "jsonl", key=False),
        Run(
            "job",
            ["job", data["bulk_failed"], "--watch", "--json", "--interval", "0.2"],
            1,
            "jsonl",
            key=False,
        ),
        Run("job", ["job", f"bulk-no-such-{realm}", "--watch"], 3, key=False),
        Run("job cancel", ["job", "cancel", f"bulk-no-such-{realm}"], 3, key=False),
        Run("job list", ["job", "list", "--json", "--limit", "1"], 0, "json", key=False),
        Run(
            "dead list", ["dead", "list", "--realm", failing, "--json", "--limit", "1"], 0, "json", key=False
        ),
        Run("dead show", ["dead", "show", data["dead"], "--json"], 0, "json", key=False),
        Run("dead show", ["dead", "show", f"no-such-{realm}"], 3, key=False),
        Run("dead list", ["dead", "list", "--bogus"], 2, key=False),
        Run("stats", ["stats", "--json"], 0, "json", key=False),
        Run("realms", ["realms", "--json", "--limit", "1"], 0, "json", key=False),
        Run(
            "token create",
            ["token", "create", "--scope", "producer", "--realm", realm, "--name", "cli reference", "--json"],
            0,
            "json",
            key=False,
        ),
        Run(
            "webhook add",
            [
                "webhook",
                "add",
                "--realm",
                realm,
                "--url",
                data["hook_url"],
                "--events",
                "sent,dead_lettered",
                "--json",
            ],
            0,
            "json",
        ),
        Run("webhook list", ["webhook", "list", "--realm", realm, "--json"], 0, "json", key=False),
        Run("webhook test", ["webhook", "test", data["webhook"], "--json"], 0, "json"),
        Run("webhook test", ["webhook", "test", f"no-such-{realm}"], 3),
        Run("webhook remove", ["webhook", "remove", data["removable"]], 0, key=False),
        Run("webhook remove", ["webhook", "remove", f"no-such-{realm}"], 3, key=False),
        Run("token list", ["token", "list", "--json"], 0, "json", key=False),
        Run("token revoke", ["token", "revoke", f"no-such-{realm}"], 3, key=False),
        Run("suppression list", ["suppression", "list", "--realm", realm, "--json"], 0, "json", key=False),
        Run("bounces", ["bounces", "--unmapped", "--limit", "1", "--json"], 0, "json"),
        Run("settings history", ["settings", "history", "--realm", realm, "--json"], 0, "json", key=False),
        Run("settings export", ["settings", "export", "--realm", realm], 0, "json", key=False),
        Run("settings show", ["settings", "show", "--realm", realm, "--json"], 0, "json"),
        Run("settings test", ["settings", "test", "--realm", realm, "--saved", "--json"], 0, "json"),
        Run("settings import", ["settings", "import", data["export"], "--dry-run", "--json"], 0, "json"),
        Run(
            "settings import",
            ["settings", "import", data["export"], "--json"],
            0,
            "json",
            prefix=data["wiped"],
        ),
        *[run for command, run in key_runs(data).items() if command not in ("settings revert", "job cancel")],
    ]
    done = run_all(first)
    (page,) = [run for run in done if run.command == "dead list" and run.json]
    assert page.result is not None and page.result.returncode == 0, page.said()
    draft = Run(
        "settings set", ["settings", "set", "--realm", realm, "--timeout", "20", "--json"], 0, "json"
    ).go()
    assert draft.result is not None and draft.result.returncode == 0, draft.said()
    done.append(draft)
    done += run_all([
        Run("settings show", ["settings", "show", "--realm", realm, "--draft", "--json"], 0, "json"),
        Run("dead list", ["dead", "list", "--realm", failing, "--json", "--limit", "1",
                          "--after", json.loads(page.result.stdout)["next_after"]], 0, "json", key=False),
    ])  # fmt: skip
    draft_id = json.loads(draft.result.stdout)["draft_id"]
    for run in (
        Run(
            "settings save", ["settings", "save", "--realm", realm, "--draft", draft_id, "--json"], 0, "json"
        ),
        Run(
            "settings rollback", ["settings", "rollback", "--realm", realm, "--to", "1", "--json"], 0, "json"
        ),
        key_runs(data)["settings revert"],
        key_runs(data)["job cancel"],
        Run("dead requeue", ["dead", "requeue", data["dead"]], 0, key=False),
        Run("dead requeue", ["dead", "requeue", f"no-such-{realm}"], 3, key=False),
        Run("dead purge", ["dead", "purge", "--realm", failing, "--yes"], 0, key=False),
    ):
        done.append(run.go())
    return done


def _documents(run: Run) -> list[Any]:
    assert run.result is not None
    if run.json == "jsonl":
        lines = run.result.stdout.splitlines()
        assert lines, run.said()
        return [json.loads(line) for line in lines]
    return [json.loads(run.result.stdout)]


@pytest.mark.integration
def test_every_run_ends_with_its_exit_code(runs: list[Run]) -> None:
    wrong = [run.said() for run in runs if run.result is None or run.result.returncode != run.code]
    assert not wrong, "unexpected exit codes:\n" + "\n".join(wrong)
    tracebacks = [run.said() for run in runs if run.result and "Traceback" in run.result.stderr]
    assert not tracebacks, "\n".join(tracebacks)


@pytest.mark.integration
@pytest.mark.parametrize("command", sorted(SHAPES))
def test_the_json_output_has_the_documented_shape(runs: list[Run], command: str) -> None:
    mine = [run for run in runs if run.command == command and run.json]
    assert mine, f"no run of `{command}` checks the JSON shape docs/cli.md documents for it: add one"
    problems = []
    for run in mine:
        assert run.result is not None and run.result.returncode == run.code, run.said()
        for document in _documents(run):
            problems += [f"{' '.join(run.argv)}: {p}" for p in shape_problems(document, SHAPES, command)]
    assert not problems, "the output does not match docs/cli.md:\n" + "\n".join(problems)


@pytest.mark.integration
def test_pages_and_their_next_after(runs: list[Run], data: dict[str, Any]) -> None:
    first, second = [json.loads(run.result.stdout) for run in runs
                     if run.command == "dead list" and run.json]  # fmt: skip
    assert isinstance(first["next_after"], str) and len(first["dead_letters"]) == 1
    assert second["next_after"] is None and len(second["dead_letters"]) == 1
    assert first["dead_letters"][0]["job_id"] != second["dead_letters"][0]["job_id"]
    (realms,) = [json.loads(run.result.stdout) for run in runs if run.command == "realms"]
    assert isinstance(realms["next_after"], str)  # this session has more than one realm


@pytest.mark.integration
def test_the_import_reports_the_wipe_it_cleared_with_iso_times(runs: list[Run], data: dict[str, Any]) -> None:
    (report,) = [json.loads(run.result.stdout) for run in runs if run.prefix]
    assert report["restored"] == [data["realm"]]
    assert report["wipe_cleared"]["noticed_by"] == "transactional@clidocs"
    assert ISO_UTC.match(report["wipe_cleared"]["noticed_at"]), report


@pytest.mark.integration
def test_the_exit_codes_seen_are_the_tables(runs: list[Run]) -> None:
    table = exit_table()
    seen = {(run.command, run.result.returncode) for run in runs if run.result is not None}
    unlisted = sorted((command, code) for command, code in seen
                      if code not in table or not {"*", command} & set(table[code]))  # fmt: skip
    assert not unlisted, f"docs/cli.md's exit-code table does not list these (command, code): {unlisted}"
    for code in (3, 4):  # the codes only some commands use: each command named ends with it in a run
        for command in table[code]:
            assert (command, code) in seen, f"no run shows `{command}` exiting {code}: add one"


@pytest.mark.integration
def test_the_secret_key_table_is_what_the_commands_need(runs: list[Run], data: dict[str, Any]) -> None:
    table = find_table(PAGE, ["command", "`MAILWORKER_SECRET_KEY`"])
    problems = []
    for index, row in enumerate(table.rows):
        command, need = " ".join(spans(row[0])), plain(row[1])
        mine = [run for run in runs if run.command == command and not run.key]
        if not mine:
            problems.append(f"{table.where(index)}: no run of `{command}` without the key: add one")
        for run in mine:
            assert run.result is not None
            refused = run.result.returncode == 1 and "MAILWORKER_SECRET_KEY is not set" in run.result.stderr
            if need == "needed" and not refused:
                problems.append(
                    f"{table.where(index)}: `{command}` is documented to need the key: {run.said()}"
                )
            if need != "needed" and refused:
                problems.append(f"{table.where(index)}: `{command}` should run without the key: {run.said()}")
    (health,) = [run for run in runs if run.command == "health"]
    assert (
        health.result is not None
        and "warn  secrets MAILWORKER_SECRET_KEY is not set here" in health.result.stdout
    )
    assert not problems, "\n".join(problems)


@pytest.mark.integration
def test_interrupted_is_130_and_a_reader_gone_is_141(data: dict[str, Any]) -> None:
    command = [sys.executable, "-m", "worker.cli", "job", data["loading"], "--watch", "--interval", "0.2"]
    with subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as watch:
        assert watch.stdout is not None and watch.stdout.readline()  # drawn once: it is watching
        watch.send_signal(signal.SIGINT)
        _out, err = watch.communicate(timeout=30)
    assert (watch.returncode, err) == (130, "error: interrupted\n")

    reader, writer = os.pipe()
    os.close(reader)  # the reader went away before anything was written
    try:
        done = subprocess.run([sys.executable, "-m", "worker.cli", "realms", "--json"], cwd=ROOT, stdout=writer,
                              stderr=subprocess.PIPE, text=True, timeout=60)  # fmt: skip
    finally:
        os.close(writer)
    assert (done.returncode, done.stderr) == (141, "")
