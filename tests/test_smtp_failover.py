"""SMTP failover per realm (issue 16, part 2): the secondary server's settings, the policy's decision table,
and delivery end to end with a real Celery worker, real Redis and real SMTP servers on loopback."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from config.crypto import MASK
from config.errors import InvalidInput, NotFound
from config.keys import PRIMARY, SECONDARY, channel
from tasks import api
from tests.support.smtp_server import SmtpTestServer, closed_port, smtp_server_fixture
from worker.policy import FAILOVER, fails_over
from worker.runtime import runtime
from worker.smtp import Kind, SmtpFailure

CONTEXT = {"user": {"username": "alice", "email": "alice@example.com"}, "realm_name": "ACME",
           "link": "https://iam.example.com/reset?k=1", "link_expiration": 30}  # fmt: skip


def _silent(stage: str, kind: Kind, *, ambiguous: bool = False) -> SmtpFailure:
    return SmtpFailure(None, f"{kind} at {stage}", stage, kind=kind, ambiguous=ambiguous)


@pytest.mark.parametrize(
    "failure, goes",
    [
        (None, True),  # the primary's circuit breaker is open: it is not even tried
        *[(_silent(stage, kind), True) for stage in ("connect", "tls", "ehlo", "auth", "noop", "mail", "rcpt")
          for kind in (Kind.REFUSED, Kind.TIMEOUT, Kind.NO_GREETING, Kind.NETWORK, Kind.DNS, Kind.CLOSED)],
        (SmtpFailure(None, "wrong version number", "tls", kind=Kind.TLS_HANDSHAKE), True),
        (SmtpFailure(421, "closing", "connect"), True),
        (SmtpFailure(421, "too busy", "mail"), True),
        (SmtpFailure(421, "shutting down", "data"), True),
        # the data went out and no reply came: the primary may have it; a second copy is not sent now
        (_silent("data", Kind.TIMEOUT, ambiguous=True), False),
        (_silent("data", Kind.CLOSED, ambiguous=True), False),
        (SmtpFailure(421, "closing", "data", ambiguous=True), False),
        # the server answered: a rejection is about the message, the recipient or our settings
        (SmtpFailure(550, "no such user", "rcpt"), False),
        (SmtpFailure(554, "rejected", "data"), False),
        (SmtpFailure(554, "no service", "connect"), False),
        (SmtpFailure(451, "try again", "rcpt"), False),
        (SmtpFailure(535, "bad credentials", "auth"), False),
        (SmtpFailure(None, "self-signed", "tls", kind=Kind.CERT_UNTRUSTED), False),
        (SmtpFailure(None, "no AUTH offered", "auth", kind=Kind.NO_AUTH), False),
        (SmtpFailure(None, "needs SMTPUTF8", "mail", kind=Kind.SMTPUTF8), False),
    ],
    ids=lambda v: (f"{v.stage}-{v.code or v.kind}{'-ambiguous' if v.ambiguous else ''}"
                   if isinstance(v, SmtpFailure) else "circuit-open" if v is None else str(v)),
)  # fmt: skip
def test_the_failover_decision_table(failure: SmtpFailure | None, goes: bool) -> None:
    assert fails_over(failure) is goes


def test_the_table_ends_with_a_catch_all_that_stays() -> None:
    assert FAILOVER[-1][2] is False and FAILOVER[0][2] is True


def test_channels_keep_servers_apart() -> None:
    assert channel("acme", PRIMARY) == "acme" and channel("acme", SECONDARY) == "acme:secondary"


# ---- the secondary's settings: the same store, model, validation and harvest rule ---------------------------


@pytest.fixture
def secondary_store():
    return runtime().store.for_server(SECONDARY)


def test_the_secondary_is_a_record_of_its_own_beside_the_primary(realm, secondary_store):
    primary = runtime().store
    primary.save(realm, {"from": "noreply@example.com", "host": "127.0.0.1", "port": 2525})
    saved = secondary_store.save(realm, {"from": "noreply@example.com", "host": "127.0.0.1", "port": 2526,
                                         "auth": True, "username": "u", "password": "pw-secondary"})  # fmt: skip
    assert saved.version == 1 and secondary_store.saved(realm).settings.port == 2526
    assert primary.saved(realm).settings.port == 2525 and primary.version(realm) == 1
    assert realm in secondary_store.realms() and realm in primary.realms()
    stored = secondary_store.saved_fields(realm)
    assert "pw-secondary" not in str(stored) and stored["password_encrypted"]


def test_the_secondary_has_the_same_validation_and_harvest_rule(realm, secondary_store):
    with pytest.raises(InvalidInput) as invalid:
        secondary_store.save(realm, {"from": "noreply@example.com", "host": "127.0.0.1", "ssl": True,
                                     "starttls": True})  # fmt: skip
    assert "ssl" in str(invalid.value)
    secondary_store.save(realm, {"from": "noreply@example.com", "host": "127.0.0.1", "auth": True,
                                 "username": "u", "password": "pw"})  # fmt: skip
    with pytest.raises(InvalidInput) as again:  # a new host must not receive the stored password unasked
        secondary_store.save(realm, {"host": "localhost", "password": MASK})
    assert "password" in str(again.value)


def test_the_secondary_has_draft_revert_and_history(realm, secondary_store):
    secondary_store.save(realm, {"from": "noreply@example.com", "host": "127.0.0.1", "port": 2600})
    secondary_store.set_draft(realm, {"port": 2601})
    assert secondary_store.effective(realm)[1] == "draft" and runtime().store.draft(realm) is None
    assert secondary_store.revert(realm)
    secondary_store.save(realm, {"port": 2602})
    assert [v["settings"]["port"] for v in secondary_store.public_history(realm)] == [2602, 2600]
    assert secondary_store.rollback(realm, 1).settings.port == 2600
    with pytest.raises(NotFound):
        runtime().store.effective(realm)


# ---- delivery end to end ---------------------------------------------------------------------------------


@pytest.fixture
def secondary_server() -> Iterator[SmtpTestServer]:
    yield from smtp_server_fixture()


def _send(realm: str, to: str) -> dict:
    return api.wait_for_result(api.send_email(realm, "password-reset", to, context=CONTEXT), timeout=30)


def _address() -> str:
    return f"user-{uuid.uuid4().hex[:8]}@example.com"


@pytest.mark.integration
def test_a_refused_primary_fails_over_at_once_and_the_result_says_secondary(
    realm, celery_worker, secondary_server
):
    runtime().store.save(realm, {"from": "noreply@example.com", "host": "127.0.0.1", "port": closed_port()})
    runtime().store.for_server(SECONDARY).save(realm, secondary_server.settings_dict())
    to = _address()
    result = _send(realm, to)
    assert result["status"] == "sent" and result["server"] == "secondary" and result["attempts"] == 1
    assert len(secondary_server.received_for(to)) == 1
    assert runtime().stats.last_hour(realm).get("failover") == 1


@pytest.mark.integration
def test_a_permanent_rejection_does_not_fail_over(realm, celery_worker, smtp_server, secondary_server):
    runtime().store.save(realm, smtp_server.settings_dict())
    runtime().store.for_server(SECONDARY).save(realm, secondary_server.settings_dict())
    to = _address()
    smtp_server.reject_recipient(to, "550 5.1.1 no such user")
    result = _send(realm, to)
    assert result["status"] == "dead-lettered" and result["reason"] == "permanent" and result["attempts"] == 1
    assert secondary_server.connections == 0 and not runtime().stats.last_hour(realm).get("failover")


@pytest.mark.integration
def test_an_open_breaker_sends_to_the_secondary_and_a_closed_one_back_to_the_primary(
    realm, celery_worker, smtp_server, secondary_server
):
    runtime().store.save(realm, smtp_server.settings_dict())
    runtime().store.for_server(SECONDARY).save(realm, secondary_server.settings_dict())
    breaker, endpoint = runtime().breaker, f"{smtp_server.host}:{smtp_server.port}"
    for _ in range(breaker.threshold):
        breaker.failure(realm, endpoint, "connect: timed out")
    assert _send(realm, _address())["server"] == "secondary"
    assert smtp_server.connections == 0 and not breaker.state(channel(realm, SECONDARY))
    breaker.success(realm)  # the primary's breaker closes: its mail goes there again
    assert _send(realm, _address())["server"] == "primary"
    assert len(secondary_server.messages) == 1 and len(smtp_server.messages) == 1


# ---- the CLI and Test Connection ---------------------------------------------------------------------------


def test_the_cli_edits_the_secondary_with_the_same_commands(realm, capsys, monkeypatch):
    from worker.cli import main

    def run(*argv: str, stdin: str = "") -> tuple[int, str]:
        monkeypatch.setattr("sys.stdin", __import__("io").StringIO(stdin))
        code = main(list(argv))
        return code, capsys.readouterr().out

    base = ("settings", "save", "--realm", realm, "--from", "noreply@example.com", "--host", "127.0.0.1")
    assert run(*base, "--port", "2525")[0] == 0
    code, out = run(*base, "--port", "2626", "--secondary", "--auth", "--username", "u", "--password-stdin",
                    stdin="pw-2\n")  # fmt: skip
    assert code == 0 and "version 1" in out
    code, out = run("settings", "show", "--realm", realm, "--secondary", "--json")
    shown = __import__("json").loads(out)
    assert shown["port"] == 2626 and shown["password"] == MASK and "pw-2" not in out
    assert __import__("json").loads(run("settings", "show", "--realm", realm, "--json")[1])["port"] == 2525
    # the harvest rule: a new port for the stored password must be given the password again
    assert run("settings", "set", "--realm", realm, "--secondary", "--port", "2727")[0] == 1
    assert run("settings", "set", "--realm", realm, "--secondary", "--timeout", "3")[0] == 0
    assert "discarded" in run("settings", "revert", "--realm", realm, "--secondary")[1]
    assert run("settings", "history", "--realm", realm, "--secondary")[1].count("2626") == 1


def test_test_connection_probes_the_secondary(realm, secondary_server):
    from tasks.connection import connection_status

    runtime().store.save(realm, {"from": "noreply@example.com", "host": "127.0.0.1", "port": closed_port()})
    runtime().store.for_server(SECONDARY).save(realm, secondary_server.settings_dict())
    assert connection_status(realm)["ok"] is False
    status = connection_status(realm, server=SECONDARY)
    assert (
        status["ok"] is True and status["server"] == "secondary" and status["port"] == secondary_server.port
    )


def test_the_admin_api_edits_the_secondary_with_server_secondary(realm, api, admin_token):
    base = f"/v1/realms/{realm}/smtp"
    with api.client(admin_token) as client:
        primary = client.post(f"{base}/save", json={"changes": {"from": "noreply@example.com", "host": "127.0.0.1",
                                                                "port": 2525}})  # fmt: skip
        assert primary.status_code == 200, primary.text
        assert client.get(base, params={"server": "secondary"}).status_code == 404
        draft = client.put(f"{base}/draft", params={"server": "secondary"},
                           json={"from": "noreply@example.com", "host": "127.0.0.1", "port": 2626})  # fmt: skip
        assert draft.status_code == 200, draft.text
        saved = client.post(
            f"{base}/save", params={"server": "secondary"}, json={"draft_id": draft.json()["draft_id"]}
        )
        assert saved.status_code == 200 and saved.json()["port"] == 2626
        assert client.get(base).json()["port"] == 2525
        assert client.get(base, params={"server": "secondary"}).json()["port"] == 2626
        history = client.get(f"{base}/history", params={"server": "secondary"}).json()["versions"]
        assert [v["settings"]["port"] for v in history] == [2626]
        assert client.post(f"{base}/revert", params={"server": "secondary"}).json() == {"reverted": False}
        assert client.get(base, params={"server": "tertiary"}).status_code == 422


def test_key_rotation_reseals_the_secondary_and_its_secret_is_bound_to_it(realm):
    from config.keys import Keys
    from config.store import SettingsStore

    rt = runtime()
    store = SettingsStore(rt.redis, Keys(f"fo-{uuid.uuid4().hex[:8]}"), rt.box)
    secondary = store.for_server(SECONDARY)
    secondary.save(realm, {"from": "noreply@example.com", "host": "127.0.0.1", "auth": True, "username": "u",
                           "password": "pw-secondary"})  # fmt: skip
    rotation = store.rotate_secrets()
    assert rotation.resealed >= 1 and not rotation.skipped
    assert secondary.saved(realm).settings.secret("password") == "pw-secondary"
    # The secondary's sealed secret copied into the primary's record does not open there.
    rt.redis.hset(store._keys.saved(realm), mapping=rt.redis.hgetall(secondary._keys.saved(realm)))
    assert store.saved(realm, lenient=True).unusable


@pytest.mark.integration
def test_the_console_email_tab_edits_the_secondary_with_the_same_form(realm, api, admin_token):
    from tests.support.console import saved_realm, signed_in
    from tests.test_console_http import email_form

    saved_realm(realm)
    tab = f"/console/realms/{realm}/email"
    with signed_in(api, admin_token) as client:
        assert "secondary (failover)</a>" in client.get(tab).text
        page = client.get(tab, params={"server": "secondary"}).text
        assert 'id="version">0<' in page and "email/save?server=secondary" in page
        reply = client.post(f"{tab}/save?server=secondary",
                            data=email_form(page, **{"from": "noreply@example.com", "host": "127.0.0.1", "port": "2626"}))  # fmt: skip
        assert (reply.status_code, reply.headers["location"]) == (303, f"{tab}?saved=1&server=secondary")
        assert "<strong>secondary (failover)</strong>" in client.get(reply.headers["location"]).text
    assert runtime().store.for_server(SECONDARY).saved(realm).settings.port == 2626
    assert runtime().store.saved(realm).version == 1 and runtime().store.saved(realm).settings.port != 2626


def test_the_key_check_of_health_covers_the_secondary(realm):
    from config.keys import Keys
    from config.store import SettingsStore

    rt = runtime()
    store = SettingsStore(rt.redis, Keys(f"fo-{uuid.uuid4().hex[:8]}"), rt.box)
    store.for_server(SECONDARY).save(realm, {"from": "noreply@example.com", "host": "127.0.0.1", "auth": True,
                                             "username": "u", "password": "pw"})  # fmt: skip
    assert store.check_key().opened == [channel(realm, SECONDARY)]
