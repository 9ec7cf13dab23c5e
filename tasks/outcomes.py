"""How a job's end reads in Celery: a dead-lettered job is a FAILURE, not a SUCCESS.

Celery knows a task's end only from how the function left: returned (SUCCESS) or raised (FAILURE). A job
that ended as a dead letter did not deliver its mail, and Flower, `celery events` and anything reading the
result backend must not show it as a success. So the task raises DeadLettered, carrying the same result
dict every reader gets back (`ended_value`): Celery records FAILURE with `DeadLettered(<reason>: <error>)`
as its exception, and the worker sends `task-failed` (Flower shows it red, the reason in its exception
column). DeadLettered is in the tasks' `throws`: Celery logs it as expected, without a traceback (the
job's own attempt line, `dead:<reason>` at WARNING, is the one that matters; worker/logs.py).

A job dropped by the recipient cooldown, an event the realm does not notify, a duplicate that was skipped:
those ended as designed and stay SUCCESS, their `status` saying which.
"""

from __future__ import annotations

from typing import Any

DEAD_LETTERED = "dead-lettered"


class DeadLettered(Exception):
    """Raised by a task whose job ended as a dead letter. `args[0]`: the job's result dict."""

    def __init__(self, result: dict[str, Any]) -> None:
        super().__init__(result)

    @property
    def result(self) -> dict[str, Any]:
        return dict(self.args[0])

    def __str__(self) -> str:
        return f"{self.result.get('reason')}: {self.result.get('error')}"

    def __repr__(self) -> str:  # what Celery's failure event and log line show
        return f"DeadLettered({self})"


def raise_if_dead(result: dict[str, Any]) -> dict[str, Any]:
    """The task's last step: return the result of a job that ended otherwise, raise for a dead letter."""
    if result.get("status") == DEAD_LETTERED:
        raise DeadLettered(result)
    return result


def dead_letter_result(value: Any) -> dict[str, Any] | None:
    """The result dict a DeadLettered stored in the result backend carried; None for anything else.

    A reader that never imported this module gets a class Celery made up with the same name and
    arguments (celery.utils.serialization): the arguments are what counts.
    """
    if isinstance(value, BaseException) and type(value).__name__ == DeadLettered.__name__ and value.args:
        carried = value.args[0]
        if isinstance(carried, dict) and carried.get("status") == DEAD_LETTERED:
            return dict(carried)
    return None


def ended_value(value: Any) -> Any:
    """What a job's result backend entry means: its result dict (a dead letter's too); any other
    exception (a task that failed for real) is raised."""
    dead = dead_letter_result(value)
    if dead is not None:
        return dead
    if isinstance(value, BaseException):
        raise value
    return value
