"""A task's final result is written with SET and PUBLISH only (worker/broker/results.py), on real Redis."""

from __future__ import annotations

import uuid
from typing import Any

from celery import states
from celery.result import AsyncResult


class Spy:
    """The backend's Redis client, recording what it is asked to do."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.client, name)
        if name == "pipeline":

            def pipeline(transaction: bool = True, **kwargs: Any) -> Any:
                self.calls.append(f"pipeline(transaction={transaction})")
                return attribute(transaction=transaction, **kwargs)

            return pipeline
        if callable(attribute):

            def call(*args: Any, **kwargs: Any) -> Any:
                self.calls.append(name)
                return attribute(*args, **kwargs)

            return call
        return attribute


def test_a_final_result_is_one_round_trip_without_a_read_and_a_retry_never_hides_it() -> None:
    from worker.app import app

    backend = app.backend
    task_id = f"lean-{uuid.uuid4().hex}"
    spy = Spy(backend.client)
    backend.__dict__["client"] = spy
    try:
        backend.store_result(task_id, {"status": "sent"}, states.SUCCESS)
        assert spy.calls == ["pipeline(transaction=False)"]  # SET and PUBLISH in it; no GET, no MULTI
        assert AsyncResult(task_id, app=app).result == {"status": "sent"}
        assert 0 < backend.client.ttl(backend.get_key_for_task(task_id)) <= backend.expires
        # A late RETRY (a copy of the job that was busy) keeps Celery's read-before-write: SUCCESS stays.
        backend.store_result(task_id, RuntimeError("retry"), states.RETRY)
        assert AsyncResult(task_id, app=app).state == states.SUCCESS
    finally:
        del backend.__dict__["client"]
        backend.forget(task_id)
