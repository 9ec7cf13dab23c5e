"""The docs against the code: tables that mirror code, the module map, and every link.

Tables are read from the Markdown (a table is found by its header row); each test names the page, the row
and what the code says instead, so a failure says which line of which page to fix. Nothing here needs Redis
or a network.
"""

from __future__ import annotations

import re
import tomllib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
MARKDOWN = [README, *PAGES]
PACKAGES = ("config", "templates", "worker", "tasks")

# ---- reading Markdown ------------------------------------------------------------------------------------

_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_CELL_SPLIT = re.compile(r"(?<!\\)\|")
_SEPARATOR = re.compile(r"^\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*$")
_CODE_SPAN = re.compile(r"`([^`]+)`")
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def relative(path: Path) -> str:
    return str(path.relative_to(ROOT))


def lines_outside_fences(path: Path) -> list[tuple[int, str]]:
    """(line number, line) of every line not inside a fenced code block."""
    found, fenced = [], False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            found.append((number, line))
    return found


def fenced_blocks(path: Path) -> list[tuple[str | None, list[str]]]:
    """(the heading above it, its lines) of every fenced code block."""
    blocks: list[tuple[str | None, list[str]]] = []
    heading: str | None = None
    current: list[str] | None = None
    for line in path.read_text(encoding="utf-8").splitlines():
        if _FENCE.match(line):
            if current is None:
                current = []
            else:
                blocks.append((heading, current))
                current = None
            continue
        if current is not None:
            current.append(line)
        elif match := _HEADING.match(line):
            heading = match.group(2)
    return blocks


@dataclass
class Table:
    path: Path
    line: int  # of the header row
    header: list[str]
    rows: list[list[str]]

    def where(self, index: int) -> str:
        """page:line of row `index` (0-based), for failure messages."""
        return f"{relative(self.path)}:{self.line + 2 + index}"


def split_row(line: str) -> list[str]:
    body = line.strip()
    body = body.removeprefix("|")
    if body.endswith("|") and not body.endswith("\\|"):
        body = body[:-1]
    return [cell.strip().replace("\\|", "|") for cell in _CELL_SPLIT.split(body)]


def tables(path: Path) -> list[Table]:
    found: list[Table] = []
    block: list[tuple[int, str]] = []
    for number, line in [*lines_outside_fences(path), (-1, "")]:
        if line.lstrip().startswith("|"):
            block.append((number, line))
            continue
        if len(block) >= 2 and _SEPARATOR.match(block[1][1].strip()):
            header = split_row(block[0][1])
            found.append(Table(path, block[0][0], header, [split_row(text) for _, text in block[2:]]))
        block = []
    return found


def find_table(path: Path, header: list[str]) -> Table:
    """The one table of `path` whose header row is exactly `header`."""
    matching = [table for table in tables(path) if table.header == header]
    assert matching, f"{relative(path)} has no table with the header | {' | '.join(header)} |"
    assert len(matching) == 1, f"{relative(path)} has {len(matching)} tables with the header {header}"
    table = matching[0]
    assert table.rows, f"{relative(path)}:{table.line}: the table {header} has no rows"
    for index, row in enumerate(table.rows):
        assert len(row) == len(header), (
            f"{table.where(index)}: {len(row)} cells, the header has {len(header)}"
        )
    return table


def plain(cell: str) -> str:
    """A cell's text without Markdown emphasis and code marks."""
    return re.sub(r"\s+", " ", cell.replace("**", "").replace("`", "")).strip()


def spans(cell: str) -> list[str]:
    return _CODE_SPAN.findall(cell)


def compare_in_order(
    table: Table, documented: list[str], expected: list[str], source: str, why_order: str = "first match wins"
) -> list[str]:
    """Problems, one line each, between a column and the code's list, whose order matters (`why_order`)."""
    problems = []
    for name, count in Counter(documented).items():
        if count > 1:
            problems.append(f"{relative(table.path)}: row {name!r} appears {count} times")
    for position, name in enumerate(expected):
        if name not in documented:
            problems.append(
                f"{relative(table.path)}: missing row {name!r} (entry {position + 1} of {source})"
            )
    for index, name in enumerate(documented):
        if name not in expected:
            problems.append(f"{table.where(index)}: row {name!r} is not in {source}")
    if not problems and documented != expected:
        for index, (found, wanted) in enumerate(zip(documented, expected, strict=True)):
            if found != wanted:
                problems.append(
                    f"{table.where(index)}: row {index + 1} is {found!r}, but {source} has {wanted!r} there "
                    f"(the order is the code's: {why_order})"
                )
                break
    return problems


def fail_with(problems: list[str]) -> None:
    assert not problems, "the docs do not match the code:\n  " + "\n  ".join(problems)


# ---- tables that mirror code ------------------------------------------------------------------------------


def test_the_hints_table_is_worker_probe_hints_row_by_row() -> None:
    from worker.probe.hints import HINTS

    table = find_table(DOCS / "test-connection.md", ["#", "why", "the hint says"])
    documented = [plain(row[1]) for row in table.rows]
    problems = compare_in_order(
        table, documented, [why for why, _test, _hint in HINTS], "worker/probe/hints.py HINTS"
    )
    for index, row in enumerate(table.rows):
        if row[0] != str(index + 1):
            problems.append(f"{table.where(index)}: numbered {row[0]!r}, expected {index + 1}")
        if not plain(row[2]):
            problems.append(f"{table.where(index)}: {plain(row[1])!r} says nothing in 'the hint says'")
    fail_with(problems)


def test_the_smtp_error_classes_are_worker_policy_classification() -> None:
    from worker.policy import CLASSIFICATION, Outcome

    table = find_table(DOCS / "delivery.md", ["#", "why", "outcome", "what happens"])
    documented = [plain(row[1]) for row in table.rows]
    expected = [why for why, _test, _outcome in CLASSIFICATION]
    problems = compare_in_order(table, documented, expected, "worker/policy.py CLASSIFICATION")
    outcomes = {why: outcome for why, _test, outcome in CLASSIFICATION}
    for index, row in enumerate(table.rows):
        why = plain(row[1])
        if why not in outcomes:
            continue
        wanted: Outcome = outcomes[why]
        if spans(row[2]) != [wanted.value]:
            problems.append(
                f"{table.where(index)}: {why!r}: outcome is {row[2]!r}, the code says `{wanted.value}`"
            )
        what = plain(row[3])
        if wanted is Outcome.RETRY and "retried" not in what:
            problems.append(f"{table.where(index)}: {why!r} is retried, but 'what happens' says {what!r}")
        if wanted is not Outcome.RETRY and f"dead letter {wanted.value}" not in what:
            problems.append(
                f"{table.where(index)}: {why!r} ends as dead letter `{wanted.value}`, but 'what happens' "
                f"says {what!r}"
            )
    fail_with(problems)


def test_the_failover_table_is_worker_policy_failover() -> None:
    from worker.policy import FAILOVER

    table = find_table(DOCS / "delivery.md", ["#", "when the primary", "to the secondary"])
    documented = [plain(row[1]) for row in table.rows]
    problems = compare_in_order(
        table, documented, [why for why, _test, _go in FAILOVER], "worker/policy.py FAILOVER"
    )
    goes = {why: go for why, _test, go in FAILOVER}
    for index, row in enumerate(table.rows):
        why = plain(row[1])
        if why in goes and plain(row[2]) != ("yes" if goes[why] else "no"):
            problems.append(f"{table.where(index)}: {why!r}: the code says {'yes' if goes[why] else 'no'}")
    fail_with(problems)


def test_the_dead_letter_reasons_are_worker_policy_reasons() -> None:
    from worker.policy import REASONS

    table = find_table(DOCS / "delivery.md", ["reason", "meaning"])
    documented = [" ".join(spans(row[0])) for row in table.rows]
    problems = compare_in_order(
        table, documented, list(REASONS), "worker/policy.py REASONS", why_order="the dict's"
    )
    for index, row in enumerate(table.rows):
        reason = documented[index]
        if reason in REASONS and plain(row[1]) != REASONS[reason]:
            problems.append(
                f"{table.where(index)}: `{reason}` means {plain(row[1])!r} here, {REASONS[reason]!r} in the code"
            )
    fail_with(problems)


def shown_default(value: Any, *, switch: tuple[str, str]) -> str:
    """How a default is written in a table: None as "none", "" as "empty", a bool by `switch`, 10.0 as 10."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return switch[0] if value else switch[1]
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple | list):
        return ",".join(str(item) for item in value)
    if value == "":
        return "empty"
    return str(value)


def settings_save_options() -> set[str]:
    """Every option string `mailworker settings save` accepts."""
    from worker.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    settings_commands = commands["settings"]._subparsers._group_actions[0].choices
    return {option for action in settings_commands["save"]._actions for option in action.option_strings}


def test_the_settings_table_has_every_smtp_settings_field_with_its_default_and_option() -> None:
    from config.smtp import SmtpSettings
    from worker.cli.settings_cmd import SECRET_OPTIONS, SWITCH_OPTIONS, VALUE_OPTIONS

    table = find_table(DOCS / "settings.md", ["JSON name", "CLI option", "default", "rule"])
    expected: dict[str, str] = {}
    for name, field in SmtpSettings.model_fields.items():
        json_name = field.alias or name
        expected[json_name] = (
            "required" if field.is_required() else shown_default(field.default, switch=("on", "off"))
        )
    options: dict[str, set[str]] = {}
    for name, option, _help in VALUE_OPTIONS + SECRET_OPTIONS:
        options.setdefault(name, set()).add(option)
    for name, option, _help in SWITCH_OPTIONS:
        options.setdefault(name, set()).update({option, f"--no-{option.removeprefix('--')}"})
    accepted = settings_save_options()

    documented = {}
    problems = []
    for index, row in enumerate(table.rows):
        names = spans(row[0])
        if len(names) != 1:
            problems.append(f"{table.where(index)}: the JSON name cell should be one `name`, not {row[0]!r}")
            continue
        documented[names[0]] = index
        if names[0] not in expected:
            problems.append(f"{table.where(index)}: `{names[0]}` is not a field of config.smtp.SmtpSettings")
            continue
        if plain(row[2]) != expected[names[0]]:
            problems.append(
                f"{table.where(index)}: `{names[0]}` default is written {plain(row[2])!r}, "
                f"the code's default is {expected[names[0]]!r}"
            )
        written = {span for span in spans(row[1]) if span.startswith("--")}
        for option in sorted(options.get(names[0], set()) - written):
            problems.append(
                f"{table.where(index)}: `{names[0]}` is set with `{option}`; the CLI option cell lacks it"
            )
        for option in sorted(written - accepted):
            problems.append(
                f"{table.where(index)}: `{option}` is not an option of `mailworker settings save`"
            )
    for json_name in expected:
        if json_name not in documented:
            problems.append(
                f"docs/settings.md: missing row for the field `{json_name}` (config/smtp.py SmtpSettings)"
            )
    fail_with(problems)


def test_the_service_configuration_table_has_every_service_settings_field_with_its_default() -> None:
    from config.settings import ServiceSettings

    table = find_table(DOCS / "operations.md", ["variable", "default", "meaning"])
    expected = {
        f"MAILWORKER_{name.upper()}": shown_default(field.default, switch=("1", "0"))
        for name, field in ServiceSettings.model_fields.items()
    }
    problems, documented = [], set()
    for index, row in enumerate(table.rows):
        names = spans(row[0])
        if len(names) != 1:
            problems.append(
                f"{table.where(index)}: the variable cell should be one `MAILWORKER_...`, not {row[0]!r}"
            )
            continue
        variable = names[0]
        documented.add(variable)
        if variable not in expected:
            problems.append(
                f"{table.where(index)}: `{variable}` is not a field of config.settings.ServiceSettings"
            )
        elif plain(row[1]) != expected[variable]:
            problems.append(
                f"{table.where(index)}: `{variable}` default is written {plain(row[1])!r}, "
                f"the code's default is {expected[variable]!r}"
            )
        if not plain(row[2]):
            problems.append(f"{table.where(index)}: `{variable}` has no meaning")
    for variable in expected:
        if variable not in documented:
            problems.append(
                f"docs/operations.md: missing row for `{variable}` (config/settings.py ServiceSettings)"
            )
    fail_with(problems)


_VARIABLE = re.compile(r"(\*\*)?`([^`]+)`(\*\*)?")


def test_the_template_table_is_the_catalogue() -> None:
    from templates.catalogue import CATALOGUE

    table = find_table(DOCS / "templates.md", ["template", "variables", "notes"])
    problems, documented = [], set()
    for index, row in enumerate(table.rows):
        # `notice` (**`subject`**, ...): what is in parentheses are the parts of one variable
        top_level = re.sub(r"\([^)]*\)", "", row[1])
        required = {name for bold, name, _ in _VARIABLE.findall(top_level) if bold}
        optional = {name for bold, name, _ in _VARIABLE.findall(top_level) if not bold}
        for name in spans(row[0]):
            documented.add(name)
            template = CATALOGUE.get(name)
            if template is None:
                problems.append(f"{table.where(index)}: `{name}` is not in templates/catalogue.py CATALOGUE")
                continue
            if required != set(template.required):
                problems.append(
                    f"{table.where(index)}: `{name}` requires {sorted(template.required)} in the catalogue, "
                    f"the table bolds {sorted(required)}"
                )
            if optional != set(template.optional):
                problems.append(
                    f"{table.where(index)}: `{name}` takes {sorted(template.optional)} optionally in the "
                    f"catalogue, the table lists {sorted(optional)}"
                )
    for name in CATALOGUE:
        if name not in documented:
            problems.append(
                f"docs/templates.md: missing row for the template `{name}` (templates/catalogue.py)"
            )
    fail_with(problems)


def test_the_failure_kinds_are_the_smtp_kind_enum() -> None:
    from worker.smtp.failures import Kind

    table = find_table(DOCS / "test-connection.md", ["kind", "what went wrong"])
    documented = [" ".join(spans(row[0])) for row in table.rows]
    kinds = [kind.value for kind in Kind]
    fail_with(
        compare_in_order(table, documented, kinds, "worker/smtp/failures.py Kind", why_order="the enum's")
    )


def test_the_layers_table_is_pyproject_importlinter() -> None:
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    layers = next(contract["layers"] for contract in contracts if contract["type"] == "layers")
    table = find_table(DOCS / "architecture.md", ["layer", "what"])
    documented = [" ".join(spans(row[0])) for row in table.rows]
    source = "pyproject.toml [tool.importlinter] layers"
    fail_with(compare_in_order(table, documented, layers, source, why_order="top to bottom"))


def module_tree(path: Path, heading: str) -> list[str]:
    """The paths of the folder tree in the code block under `heading` (two spaces of indent per level)."""
    blocks = [lines for above, lines in fenced_blocks(path) if above == heading]
    assert len(blocks) == 1, (
        f"{relative(path)}: expected one code block under '{heading}', found {len(blocks)}"
    )
    paths: list[str] = []
    parents: list[str] = []
    for line in blocks[0]:
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip(" "))
        assert indent % 2 == 0, f"{relative(path)}: odd indentation in the folder tree: {line!r}"
        depth = indent // 2
        assert depth <= len(parents), f"{relative(path)}: the folder tree skips a level at {line!r}"
        parents = parents[:depth]
        name = line.split()[0]
        full = "".join(parents) + name
        paths.append(full)
        if name.endswith("/"):
            parents.append(name)
    return paths


def test_the_architecture_tree_names_every_module_and_nothing_else() -> None:
    listed = module_tree(DOCS / "architecture.md", "The folder tree")
    problems = [
        f"docs/architecture.md: the folder tree lists {entry}, which does not exist"
        for entry in listed
        if not (ROOT / entry).exists()
    ]
    for package in PACKAGES:
        for module in sorted((ROOT / package).rglob("*.py")):
            name = relative(module)
            if module.name != "__init__.py" and name not in listed:
                problems.append(f"docs/architecture.md: the folder tree lacks {name}")
    fail_with(problems)


# ---- pages and links --------------------------------------------------------------------------------------


def links(path: Path) -> list[tuple[int, str]]:
    """(line, target) of every Markdown link outside code."""
    found = []
    for number, line in lines_outside_fences(path):
        for target in _LINK.findall(_CODE_SPAN.sub("", line)):
            found.append((number, target))
    return found


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: Counter[str] = Counter()
    found = set()
    for _number, line in lines_outside_fences(path):
        match = _HEADING.match(line)
        if match:
            base = slug(match.group(2))
            found.add(base if not seen[base] else f"{base}-{seen[base]}")
            seen[base] += 1
    return found


def test_there_are_docs_pages() -> None:
    assert len(PAGES) >= 10, f"expected the docs pages under docs/, found {[page.name for page in PAGES]}"


def test_every_docs_page_is_linked_from_the_readme() -> None:
    targets = {target.split("#", 1)[0] for _line, target in links(README)}
    missing = [relative(page) for page in PAGES if relative(page) not in targets]
    assert not missing, "README.md does not link to: " + ", ".join(missing)


@pytest.mark.parametrize("path", MARKDOWN, ids=relative)
def test_every_relative_link_points_to_a_file_and_heading_that_exist(path: Path) -> None:
    problems = []
    checked = 0
    for number, target in links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        checked += 1
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        if not resolved.exists():
            problems.append(f"{relative(path)}:{number}: {target} -> no such file")
            continue
        if ROOT not in resolved.parents and resolved != ROOT:
            problems.append(f"{relative(path)}:{number}: {target} leads outside the repository")
            continue
        if anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            problems.append(
                f"{relative(path)}:{number}: {target} -> {relative(resolved)} has no heading #{anchor}"
            )
    assert checked, f"{relative(path)} has no relative link at all: every page links to at least one other"
    fail_with(problems)


# A path of the repository (`tests/reliability/...` is an ellipsis, not a path).
_REPO_PATH = re.compile(
    r"^(?!.*\.\.\.)(config|worker|tasks|templates|tests|bench|examples|deploy|docs)/[\w./-]*(::\w+)?$"
)


@pytest.mark.parametrize("path", MARKDOWN, ids=relative)
def test_every_file_named_in_code_marks_exists(path: Path) -> None:
    """`worker/policy.py`, `tests/x.py::test_y` in the text: stale module paths are what the docs got wrong."""
    problems, checked = [], 0
    for number, line in lines_outside_fences(path):
        for span in spans(line):
            if not _REPO_PATH.match(span):
                continue
            checked += 1
            file_part, _, function = span.partition("::")
            target = ROOT / file_part
            if not target.exists():
                problems.append(f"{relative(path)}:{number}: `{span}` does not exist")
            elif function and not re.search(rf"^(async )?def {function}\b", target.read_text(), re.M):
                problems.append(
                    f"{relative(path)}:{number}: `{span}`: {file_part} has no function {function}"
                )
    assert checked, (
        f"{relative(path)} names no file of the repository: it should point at the code it describes"
    )
    fail_with(problems)
