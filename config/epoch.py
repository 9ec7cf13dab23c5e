"""The store's epoch: proof that the Redis behind the store still holds what was saved into it.

Many Redis installations keep nothing on disk: a restart comes back empty, and every realm's settings,
queued job and result are gone without a word. The first save writes an epoch (a random id and its time)
beside the settings; a store that holds no epoch has either never been configured or lost its data. A
worker that saw an epoch and finds it gone (or replaced) records what it noticed under `wiped`, so
`mailworker health` can say what was lost, and producers get a retryable StoreUnavailable instead of
"this realm does not exist".
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from config.errors import StoreUnavailable
from config.keys import Keys


@dataclass(frozen=True)
class Epoch:
    id: str
    created_at: float


def queue_epoch(pipe: Any, keys: Keys, now: float | None = None) -> None:
    """Inside a save's transaction: the epoch, unless one exists (HSETNX keeps the first)."""
    pipe.hsetnx(keys.epoch(), "id", uuid.uuid4().hex)
    pipe.hsetnx(keys.epoch(), "created_at", repr(time.time() if now is None else now))


def read_epoch(client: Any, keys: Keys) -> Epoch | None:
    raw = client.hgetall(keys.epoch())
    if not raw or "id" not in raw:
        return None
    return Epoch(str(raw["id"]), float(raw.get("created_at") or 0))


def read_wipe(client: Any, keys: Keys) -> dict[str, str] | None:
    raw = client.hgetall(keys.wiped())
    return {str(k): str(v) for k, v in raw.items()} if raw else None


def record_wipe(client: Any, keys: Keys, lost: Epoch, noticed_by: str, now: float | None = None) -> None:
    """What a worker noticed; the first notice wins (HSETNX), later ones add nothing."""
    fields = {
        "lost_epoch": lost.id,
        "lost_epoch_created_at": repr(lost.created_at),
        "noticed_at": repr(time.time() if now is None else now),
        "noticed_by": noticed_by,
    }
    pipe = client.pipeline(transaction=False)
    for name, value in fields.items():
        pipe.hsetnx(keys.wiped(), name, value)
    pipe.execute()


def store_empty_error(wipe: dict[str, str] | None) -> StoreUnavailable:
    """The retryable error for a store that holds no epoch: wiped (when a worker noticed) or never set up."""
    if wipe:
        noticed = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(wipe.get("noticed_at") or 0)))
        return StoreUnavailable(
            f"the config store was wiped (Redis lost its data; noticed {noticed} by {wipe.get('noticed_by')}): "
            "every realm's settings are gone; restore them (`mailworker settings import FILE`, from an export) "
            "or save each realm again (`mailworker settings save --realm ...`), and retry"
        )
    return StoreUnavailable(
        "the config store holds no settings at all: no realm was saved yet, or Redis lost its data "
        "(restarted without persistence?); save the realm's settings (`mailworker settings save`, or "
        "`mailworker settings import FILE` from an export) and retry"
    )
