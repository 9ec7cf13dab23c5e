"""mail.test_connection: the admin console's "Test Connection" button, run by a worker.

    from tasks.connection import test_connection
    status = test_connection("acme")                       # the draft when there is one, else the saved
    status = test_connection("acme", use_draft=False, send_to="admin@acme.example")
    status["ok"], status["failed_stage"], status["hint"]

The task's arguments carry no secret: the worker reads the draft or the saved settings from the store, so a
password being edited is tested before it is saved without ever travelling through the broker. The result
(JSON) is the probe's status (worker/probe/status.py) plus realm, source ("draft" | "saved") and version.
"""

from __future__ import annotations

import logging
from typing import Any

import celery.exceptions

from config.errors import InvalidInput, MailWorkerError, Unavailable, WorkerUnavailable
from config.keys import PRIMARY
from config.names import check_realm
from config.smtp import check_address
from tasks import signals  # noqa: F401  (per-process setup of workers)
from tasks.waiting import require_worker, wait_result
from worker.app import CONTROL, TEST_CONNECTION_TASK, app
from worker.content.message import OutgoingMessage, build_message
from worker.probe import ProbeStatus, default_deadline, probe_smtp
from worker.runtime import runtime

log = logging.getLogger(__name__)

TASK_NAME = TEST_CONNECTION_TASK
TEST_TEMPLATE = "email-test"
# Between the probe's own limit and the caller's wait: queueing, the result's way back through Redis.
RESULT_MARGIN_S = 3.0
MIN_DEADLINE_S = 1.0


class NoAnswer(Unavailable):
    """No worker finished the test within the caller's wait."""


@app.task(name=TASK_NAME, bind=True, acks_late=False)
def run_connection_test(
    self: Any,
    realm: str,
    *,
    use_draft: bool = True,
    send_to: str | None = None,
    deadline_s: float | None = None,
    server: str = PRIMARY,
) -> dict[str, Any]:
    # acks_late off: a test whose worker died is not worth re-running after a redelivery (the admin has
    # stopped waiting), and a test message must not go out twice.
    return connection_status(
        realm, use_draft=use_draft, send_to=send_to, deadline_s=deadline_s, server=server
    )


def connection_status(
    realm: str, *, use_draft: bool = True, send_to: str | None = None, deadline_s: float | None = None,
    server: str = PRIMARY,
) -> dict[str, Any]:  # fmt: skip
    """What the task does, callable without Celery: read the settings (of the realm's `server`), probe,
    return the status JSON."""
    rt = runtime()
    try:
        check_realm(realm)
        settings, source, version = rt.store.for_server(server).effective(realm, use_draft=use_draft)
    except MailWorkerError as error:
        return _settings_missing(realm, str(error))
    limit = default_deadline(settings)
    if deadline_s is not None:
        limit = max(MIN_DEADLINE_S, min(limit, float(deadline_s)))

    def test_message() -> OutgoingMessage:
        assert send_to is not None
        rendered = rt.renderer.render(realm, TEST_TEMPLATE, None, {"realm_name": realm})
        return build_message(settings, rendered, send_to)

    status: ProbeStatus = probe_smtp(
        settings,
        ca_file=rt.settings.smtp_ca_file,
        send=test_message if send_to else None,
        deadline_s=limit,
        oauth_token_provider=rt.oauth.probe_token,  # used only when auth_type is xoauth2
    )
    status.realm, status.source, status.version, status.send_to = realm, source, version, send_to
    result = status.to_dict()
    if server != PRIMARY:
        result["server"] = server
    if status.ok:
        log.info("connection test of realm %s (%s, version %s): ok in %.0f ms",
                 realm, source, version, status.elapsed_ms)  # fmt: skip
    else:
        log.info("connection test of realm %s (%s, version %s): failed at %s: %s",
                 realm, source, version, status.failed_stage, status.error)  # fmt: skip
    return result


def _settings_missing(realm: str, error: str) -> dict[str, Any]:
    return {
        "ok": False,
        "realm": realm,
        "source": None,
        "version": None,
        "failed_stage": "settings",
        "kind": "settings",
        "error": error,
        "hint": None,
        "stages": [],
        "smtp_code": None,
        "smtp_reply": None,
    }


def test_connection(
    realm: str,
    *,
    use_draft: bool = True,
    send_to: str | None = None,
    timeout: float = 60.0,
    server: str = PRIMARY,
) -> dict[str, Any]:
    """Run the test (of the realm's `server`: "primary" or "secondary") on a worker (control queue) and
    wait up to `timeout` seconds for its status.

    Raises NotFound when the realm has no settings (checked here, before anything is enqueued),
    InvalidInput for a bad `send_to`, WorkerUnavailable at once when no live worker serves the control
    queue, NoAnswer when no worker finished in time.
    """
    check_realm(realm)
    if not isinstance(timeout, int | float) or timeout <= RESULT_MARGIN_S + MIN_DEADLINE_S:
        raise InvalidInput.one("timeout", f"must be more than {RESULT_MARGIN_S + MIN_DEADLINE_S:g} seconds")
    # Lenient: settings whose stored secret cannot be used are still tested, and fail at the settings stage
    # on the worker with the reason; here only allow_utf8 is needed, for checking send_to.
    store = runtime().store.for_server(server)
    settings, _source, _version = store.effective(realm, use_draft=use_draft, lenient=True)
    if send_to is not None:
        try:
            send_to = check_address(send_to.strip(), allow_utf8=settings.allow_utf8)
        except (ValueError, AttributeError) as error:
            raise InvalidInput.one("send_to", f"not a valid address: {error}") from None
    kwargs = {
        "realm": realm,
        "use_draft": use_draft,
        "send_to": send_to,
        "deadline_s": timeout - RESULT_MARGIN_S,  # the probe ends before we stop waiting
    }
    if server != PRIMARY:  # only then: a worker of an older version still runs the primary's test
        kwargs["server"] = server
    require_worker(CONTROL)  # say so now rather than wait out the timeout in silence
    # expires: a test nobody picked up in time must not run (and send a test message) later.
    result = app.send_task(TASK_NAME, kwargs=kwargs, queue=CONTROL, expires=timeout)
    try:
        value = wait_result(result, timeout, CONTROL)
    except WorkerUnavailable:
        result.revoke()
        raise
    except celery.exceptions.TimeoutError:
        started = result.state == "STARTED"
        result.revoke()
        if started:
            raise NoAnswer(f"a worker took the test but did not finish within {timeout:g}s") from None
        raise NoAnswer(
            f"no worker answered on the {CONTROL} queue within {timeout:g}s: is `mailworker worker` running?"
        ) from None
    finally:
        result.forget()
    if not isinstance(value, dict):
        raise TypeError(f"{TASK_NAME} returned {value!r}")
    return value
