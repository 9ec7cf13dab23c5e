"""The producer side of bulk: each recipient validated into its stored form, in chunks as they come.

Runs in `tasks.api.send_bulk`: 100,000 recipients from a generator never sit in one list, and the first
broken rule rejects the whole call, naming `recipients[17].email` and the rule.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from functools import lru_cache
from typing import Any

from config.errors import InvalidInput
from config.names import check_locale
from config.smtp import check_address
from worker.jobs.model import check_depth, check_line, check_links

DEFAULT_CHUNK_SIZE = 200
MAX_CHUNK_SIZE = 1000
MAX_RECIPIENT_CONTEXT_BYTES = 8 * 1024
# A plain dot-atom local part (what almost every real address is). Anything else, and every new domain,
# goes through email-validator; this only spares its ~30 µs on the 100,000th address at the same domain.
_DOT_ATOM = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*\Z")


@lru_cache(maxsize=4096)
def _checked_domain(domain: str, allow_utf8: bool) -> str:
    return check_address(f"a@{domain}", allow_utf8=allow_utf8).rpartition("@")[2]


def check_recipient_address(address: str, *, allow_utf8: bool) -> str:
    """Same verdict and normal form as config.smtp.check_address, at a few µs for the common shape."""
    local, at, domain = address.rpartition("@")
    if at and len(address) <= 254 and len(local) <= 64 and _DOT_ATOM.match(local):
        try:
            return f"{local}@{_checked_domain(domain, allow_utf8)}"
        except ValueError:
            pass  # let the full check word the error for the whole address
    return check_address(address, allow_utf8=allow_utf8)


def parse_recipient(index: int, raw: Any, *, allow_utf8: bool) -> dict[str, Any]:
    """One recipient as given (an address, or {email, name?, locale?, context?}) -> its stored form.

    Raises InvalidInput naming `recipients[index].<field>` and the rule.
    """
    where = f"recipients[{index}]"
    if isinstance(raw, str):
        raw = {"email": raw}
    if not isinstance(raw, Mapping):
        raise InvalidInput.one(where, "must be an address or a dict with 'email' (and name, locale, context)")
    unknown = set(raw) - {"email", "name", "locale", "context"}
    if unknown:
        raise InvalidInput.one(
            f"{where}.{sorted(unknown)[0]}", "unknown field; use email, name, locale, context"
        )
    email = check_line(f"{where}.email", raw.get("email"), max_length=254)
    try:
        stored: dict[str, Any] = {"to": check_recipient_address(email, allow_utf8=allow_utf8)}
    except ValueError as error:
        raise InvalidInput.one(f"{where}.email", f"not a valid address: {error}") from None
    if raw.get("name") is not None:
        stored["name"] = check_line(f"{where}.name", raw["name"], max_length=200)
    locale = check_locale(f"{where}.locale", raw.get("locale"))
    if locale is not None:
        stored["locale"] = locale
    context = raw.get("context")
    if context:
        stored["context"] = check_recipient_context(f"{where}.context", context)
    return stored


def check_recipient_context(field_name: str, context: Any) -> dict[str, Any]:
    """The job context's rules (depth, links) with a smaller size limit: it is merged over the job's."""
    if not isinstance(context, dict):
        raise InvalidInput.one(field_name, "must be a JSON object (a dict)")
    check_depth(field_name, context)  # first: json.dumps recurses
    try:
        size = len(json.dumps(context, ensure_ascii=False, allow_nan=False).encode("utf-8"))
    except (TypeError, ValueError) as error:
        raise InvalidInput.one(field_name, f"is not JSON: {error}") from None
    except UnicodeEncodeError:
        raise InvalidInput.one(
            field_name, "holds a string that is not valid Unicode (lone surrogate)"
        ) from None
    if size > MAX_RECIPIENT_CONTEXT_BYTES:
        # Stored in Redis for every recipient: 100,000 recipients at this limit are already 800 MB.
        raise InvalidInput.one(field_name, f"is {size} bytes as JSON; the limit per recipient is "
                                           f"{MAX_RECIPIENT_CONTEXT_BYTES} (shared values go in the job's context)")  # fmt: skip
    check_links(context, field=field_name)
    return context


def chunked(recipients: Iterable[Any], size: int, *, allow_utf8: bool) -> Iterator[list[dict[str, Any]]]:
    """Validated recipients in lists of `size`, as they come: 100,000 never sit in one list."""
    chunk: list[dict[str, Any]] = []
    for index, raw in enumerate(recipients):
        chunk.append(parse_recipient(index, raw, allow_utf8=allow_utf8))
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
