"""A task's final result in two Redis commands instead of five.

Celery's Redis backend reads the stored result before every write (GET), so that a lost worker's late
write never overwrites a SUCCESS, then writes it in a transaction: MULTI, SETEX, PUBLISH, EXEC. For a
final state (SUCCESS, FAILURE) the service needs neither: a job's end is decided once, under its claim,
and recorded in the delivery ledger before the result is written, so every later copy of the job ends the
same way (a "duplicate-skipped" result carries the delivered record of the first). The final write is
therefore SET with its expiry, and PUBLISH for whoever waits, in one round trip; a transactional job's
result (mail.send, mail.event) is not published at all: its waiters read it (tasks/waiting.py). States that are not final
(RETRY) keep Celery's read-before-write: a late RETRY never hides a result that is there.
"""

from __future__ import annotations

from typing import Any

from celery import states
from celery.backends.base import BackendStoreError
from celery.backends.redis import RedisBackend
from kombu.utils.encoding import bytes_to_str

from worker.broker.transport import LEDGER_TRACKED


def store_result_lean(backend: RedisBackend) -> None:
    """Make `backend` (Celery's Redis or Sentinel backend) write final states without the read and the
    transaction."""
    celery_store = backend._store_result

    def _store_result(task_id: str, result: Any, state: str, traceback: Any = None, request: Any = None,
                      **kwargs: Any) -> Any:  # fmt: skip
        if state not in states.READY_STATES:
            return celery_store(task_id, result, state, traceback=traceback, request=request, **kwargs)
        meta = backend._get_result_meta(result=result, state=state, traceback=traceback, request=request)
        meta["task_id"] = bytes_to_str(task_id)
        value = backend.encode(meta)
        if isinstance(value, str) and len(value) > backend._MAX_STR_VALUE_SIZE:
            raise BackendStoreError("value too large for Redis backend", state=state, task_id=task_id)
        expires = backend.failure_expires if state == states.FAILURE else backend.expires
        # Nobody subscribes to a transactional job's result as it is published (producers get the job id
        # and go; worker/app.py): whoever waits for one reads it (tasks/waiting.py), no PUBLISH needed.
        publish = getattr(request, "task", None) not in LEDGER_TRACKED
        backend.ensure(
            _set_and_publish, (backend, backend.get_key_for_task(task_id), value, expires, publish)
        )
        return result

    backend._store_result = _store_result


def _set_and_publish(backend: RedisBackend, key: str, value: Any, expires: int | None, publish: bool) -> None:
    with backend.client.pipeline(transaction=False) as pipe:
        pipe.set(key, value, ex=int(expires) if expires else None)
        if publish:
            pipe.publish(key, value)
        pipe.execute()
