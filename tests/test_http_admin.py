"""The admin API on a real server: the Email tab's settings (draft, save, revert, test, history, rollback),
realms, dead letters and stats, with the CLI's rules, conflicts and secrecy."""

from __future__ import annotations

import time
from typing import Any

import pytest

from config.smtp import MASK
from tests.support.http import ApiServer, new_token
from tests.support.smtp_server import SmtpTestServer, closed_port
from worker.jobs.deadletters import DeadLetter
from worker.jobs.model import new_job
from worker.runtime import runtime

pytestmark = pytest.mark.integration

PASSWORD = "s3cret-Pa55word"


def smtp(realm: str) -> str:
    return f"/v1/realms/{realm}/smtp"


def test_the_email_tab_cycle_draft_save_history_rollback_revert(
    api: ApiServer, admin_token: str, realm: str
) -> None:
    with api.client(admin_token) as client:
        assert client.get(smtp(realm)).status_code == 404  # nothing saved yet
        assert client.get(f"{smtp(realm)}/draft").status_code == 404
        draft = client.put(f"{smtp(realm)}/draft", json={"from": "noreply@acme.example", "host": "127.0.0.1",
                                                         "port": 2525, "from_display_name": "Acme"})  # fmt: skip
        assert draft.status_code == 200, draft.text
        body = draft.json()
        assert (body["source"], body["version"], body["host"], body["port"]) == (
            "draft",
            0,
            "127.0.0.1",
            2525,
        )
        assert {c["field"] for c in body["pending_changes"]} >= {"from", "host", "port"}
        assert client.get(f"{smtp(realm)}/draft").json()["draft_id"] == body["draft_id"]

        saved = client.post(f"{smtp(realm)}/save", json={"draft_id": body["draft_id"], "note": "first"})
        assert saved.status_code == 200, saved.text
        assert (saved.json()["version"], saved.json()["source"]) == (1, "saved")
        assert client.get(f"{smtp(realm)}/draft").status_code == 404  # a save consumes the draft
        shown = client.get(smtp(realm)).json()
        assert (shown["version"], shown["from_display_name"], shown["draft_id"]) == (1, "Acme", None)

        second = client.post(f"{smtp(realm)}/save", json={"changes": {"port": 2526}})
        assert second.json()["version"] == 2
        assert [c["field"] for c in second.json()["changes"]] == ["port"]

        history = client.get(f"{smtp(realm)}/history").json()["versions"]
        assert [v["version"] for v in history] == [2, 1]
        assert history[1]["note"] == "first" and history[0]["by"].startswith("token test (")
        assert history[0]["saved_at"].endswith("Z")

        rolled = client.post(f"{smtp(realm)}/rollback", json={"version": 1})
        assert (rolled.json()["version"], rolled.json()["port"]) == (3, 2525)

        client.put(f"{smtp(realm)}/draft", json={"host": "127.0.0.2"})
        assert client.post(f"{smtp(realm)}/revert").json() == {"reverted": True}
        assert client.post(f"{smtp(realm)}/revert").json() == {"reverted": False}
        assert client.get(smtp(realm)).json()["host"] == "127.0.0.1"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"ssl": True, "starttls": True}, "ssl"),
        ({"port": 70000}, "port"),
        ({"from": "not an address"}, "from"),
        ({"no_such_field": 1}, "no_such_field"),
        ({"auth": True}, "username"),
    ],
)
def test_bad_settings_are_422_naming_the_field(
    api: ApiServer, admin_token: str, realm: str, changes: dict[str, Any], field: str
) -> None:
    base = {"from": "noreply@acme.example", "host": "127.0.0.1", "port": 2525}
    with api.client(admin_token) as client:
        reply = client.put(f"{smtp(realm)}/draft", json={**base, **changes})
        assert reply.status_code == 422, reply.text
        assert field in [problem["field"] for problem in reply.json()["errors"]], reply.json()
        # The CLI's rule text, word for word: both come from the settings model.
        from config.errors import InvalidInput

        with pytest.raises(InvalidInput) as raised:
            runtime().store.set_draft(realm, {**base, **changes})
        assert reply.json()["errors"] == [{"field": f, "rule": r} for f, r in raised.value.problems]


def test_the_password_is_masked_and_asked_again_when_the_host_changes(
    api: ApiServer, admin_token: str, realm: str
) -> None:
    with api.client(admin_token) as client:
        saved = client.post(f"{smtp(realm)}/save", json={"changes": {
            "from": "noreply@acme.example", "host": "127.0.0.1", "port": 2525, "auth": True,
            "username": "mailer", "password": PASSWORD}})  # fmt: skip
        assert saved.status_code == 200 and saved.json()["password"] == MASK
        replies = [saved, client.get(smtp(realm)), client.get(f"{smtp(realm)}/history")]
        # Sending the stored password elsewhere needs it typed again: whoever may edit cannot harvest it.
        moved = client.put(f"{smtp(realm)}/draft", json={"host": "127.0.0.9"})
        assert moved.status_code == 422 and moved.json()["errors"][0]["field"] == "password"
        again = client.put(f"{smtp(realm)}/draft", json={"host": "127.0.0.9", "password": PASSWORD})
        assert again.status_code == 200 and again.json()["password"] == MASK
        replies += [moved, again, client.get(f"{smtp(realm)}/draft")]
    assert all(PASSWORD not in reply.text for reply in replies)


def test_saves_that_would_lose_someones_work_are_409(api: ApiServer, admin_token: str, realm: str) -> None:
    with api.client(admin_token) as client:
        client.post(f"{smtp(realm)}/save", json={"changes": {"from": "a@acme.example", "host": "127.0.0.1"}})
        stale = client.post(f"{smtp(realm)}/save", json={"changes": {"port": 26}, "expect_version": 0})
        assert stale.status_code == 409 and "version" in stale.json()["error"]
        draft_id = client.put(f"{smtp(realm)}/draft", json={"port": 2600}).json()["draft_id"]
        unseen = client.post(f"{smtp(realm)}/save", json={"changes": {"port": 27}})
        assert unseen.status_code == 409 and draft_id in unseen.json()["error"]
        named = client.post(f"{smtp(realm)}/save", json={"changes": {"port": 27}, "draft_id": draft_id})
        assert named.status_code == 200 and named.json()["port"] == 27
        assert client.post(f"{smtp(realm)}/rollback", json={"version": 9}).status_code == 404


def test_test_connection_says_ok_or_the_failed_stage_with_its_hint(
    api: ApiServer, admin_token: str, realm: str, smtp_server: SmtpTestServer, celery_worker: Any
) -> None:
    runtime().store.save(realm, smtp_server.settings_dict())
    with api.client(admin_token) as client:
        ok = client.post(f"{smtp(realm)}/test", json={"target": "saved", "send_to": "admin@acme.example"})
        assert ok.status_code == 200, ok.text
        assert ok.json()["ok"] is True and ok.json()["source"] == "saved"
        assert [m.recipients for m in smtp_server.messages] == [["admin@acme.example"]]
        # The draft is what the form holds: tested without saving it.
        client.put(f"{smtp(realm)}/draft", json={"port": closed_port()})
        failed = client.post(f"{smtp(realm)}/test", json={"target": "draft"}).json()
        assert (failed["ok"], failed["source"], failed["failed_stage"]) == (False, "draft", "connect")
        assert failed["hint"]
        assert client.get(smtp(realm)).json()["version"] == 1
        bad = client.post(f"{smtp(realm)}/test", json={"target": "elsewhere"})
        assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "target"


def test_scopes_and_realms(api: ApiServer, producer_token: str, realm: str) -> None:
    runtime().store.save(realm, {"from": "a@acme.example", "host": "127.0.0.1"})
    runtime().store.save(f"{realm}-b", {"from": "a@acme.example", "host": "127.0.0.1"})
    with api.client(producer_token) as client:
        assert client.get(smtp(realm)).status_code == 403
        assert client.get("/v1/realms").status_code == 403
    limited = new_token("admin", (realm, f"{realm}-new"))
    with api.client(limited) as client:
        assert client.get(smtp(f"{realm}-b")).status_code == 404
        assert client.put(f"{smtp(f'{realm}-b')}/draft", json={"port": 26}).status_code == 404
        rows = client.get("/v1/realms").json()["realms"]
        assert [(r["realm"], r["version"]) for r in rows] == [(realm, 1), (f"{realm}-new", 0)]


def test_realms_are_listed_a_page_at_a_time(api: ApiServer, realm: str) -> None:
    names = [f"{realm}-{i}" for i in range(3)]
    with api.client(new_token("admin", tuple(names))) as client:
        first = client.get("/v1/realms", params={"limit": 2}).json()
        assert [r["realm"] for r in first["realms"]] == names[:2] and first["next_after"] == names[1]
        rest = client.get("/v1/realms", params={"limit": 2, "after": first["next_after"]}).json()
        assert ([r["realm"] for r in rest["realms"]], rest["next_after"]) == (names[2:], None)
        wrong = client.get("/v1/realms", params={"after": "nope"})
        assert wrong.status_code == 422 and wrong.json()["errors"][0]["field"] == "after"


def dead(realm: str, key: str, reason: str = "rejected") -> DeadLetter:
    """A dead letter holding a real job (as the worker writes it), so that requeue can send it."""
    context = {"user": {"username": "bob"}, "link": "https://iam.example.com/r", "link_expiration": 30}
    job = new_job(realm, "password-reset", "bob@acme.example", context=context, idempotency_key=key)
    letter = DeadLetter(job_id=job.id, realm=realm, template=job.template, to=job.to, reason=reason,
                        error="550 no such user", attempts=1, job=job.model_dump(mode="json"))  # fmt: skip
    runtime().dead_letters.add(letter)
    return letter


def test_dead_letters_list_show_requeue_delete(
    api: ApiServer, admin_token: str, realm: str, smtp_server: SmtpTestServer, celery_worker: Any
) -> None:
    runtime().store.save(realm, smtp_server.settings_dict())
    ids = sorted(dead(realm, f"dead-{i}").job_id for i in range(2))
    other = dead(f"{realm}-x", "dead-x", reason="template").job_id
    with api.client(admin_token) as client:
        listed = client.get("/v1/dead-letters", params={"realm": realm}).json()["dead_letters"]
        assert sorted(lt["job_id"] for lt in listed) == ids and "job" not in listed[0]
        assert listed[0]["died_at"].endswith("Z")
        by_reason = client.get("/v1/dead-letters", params={"reason": "template"}).json()["dead_letters"]
        assert other in [lt["job_id"] for lt in by_reason]
        assert client.get("/v1/dead-letters", params={"reason": "nope"}).status_code == 422
        one = client.get(f"/v1/dead-letters/{ids[0]}").json()
        assert (one["reason"], one["error"]) == ("rejected", "550 no such user")

        requeued = client.post(f"/v1/dead-letters/{ids[0]}/requeue")
        assert (requeued.status_code, requeued.json()) == (202, {"job_id": ids[0]})
        assert client.get(f"/v1/dead-letters/{ids[0]}").status_code == 404
        deadline = time.monotonic() + 20
        while not smtp_server.messages and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [m.recipients for m in smtp_server.messages] == [["bob@acme.example"]]

        assert client.delete(f"/v1/dead-letters/{ids[1]}").status_code == 204
        assert client.delete(f"/v1/dead-letters/{ids[1]}").status_code == 404
    with api.client(new_token("admin", (realm,))) as client:
        assert client.get(f"/v1/dead-letters/{other}").status_code == 404  # another realm's
        assert client.post(f"/v1/dead-letters/{other}/requeue").status_code == 404
        assert client.delete(f"/v1/dead-letters/{other}").status_code == 404
        assert client.get("/v1/dead-letters").json()["dead_letters"] == []
    assert runtime().dead_letters.get(other).realm == f"{realm}-x"


def test_stats_per_realm_and_hour(api: ApiServer, admin_token: str, realm: str) -> None:
    stats = runtime().stats
    stats.count(realm, "sent", 3)
    stats.count(realm, "dead")
    stats.count(f"{realm}-other", "sent", 5)
    with api.client(admin_token) as client:
        data = client.get("/v1/stats", params={"realm": realm, "hours": 6}).json()
    assert set(data) >= {"queues", "unacked", "dead_letters", "realms"}
    assert list(data["realms"]) == [realm]
    hours = data["realms"][realm]["hours"]
    assert len(hours) == 6 and (hours[-1]["sent"], hours[-1]["dead"]) == (3, 1)
    assert all(h["sent"] == 0 for h in hours[:-1]) and hours[0]["hour"] < hours[-1]["hour"]
    assert data["realms"][realm]["last_hour"]["sent"] == 3
    with api.client(new_token("admin", (realm,))) as client:
        limited = client.get("/v1/stats").json()
        assert list(limited["realms"]) == [realm]
        assert client.get("/v1/stats", params={"realm": f"{realm}-other"}).status_code == 404


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("PUT", "/smtp/draft", b"[1, 2]", 422),
        ("PUT", "/smtp/draft", b'"text"', 422),
        ("PUT", "/smtp/draft", b"{not json", 400),
        ("PUT", "/smtp/draft", b'{"port": [1], "host": {"a": 1}}', 422),
        ("PUT", "/smtp/draft", b'{"notify_events": "' + b"A" * 5000 + b'"}', 422),
        ("PUT", "/smtp/draft", b'{"from": "a@b.example", "host": "h\\u0000\\r\\nRCPT TO:<x>"}', 422),
        ("POST", "/smtp/save", b'{"changes": [], "draft_id": 5}', 422),
        ("POST", "/smtp/save", b'{"expect_version": 1e400}', 422),
        ("POST", "/smtp/rollback", b'{"version": "x"}', 422),
        ("POST", "/smtp/rollback", b'{"version": 99999999999999999999999999}', 422),
        ("POST", "/smtp/test", b'{"send_to": {"$ne": 1}}', 422),
    ],
)
def test_no_body_gives_a_500(api: ApiServer, admin_token: str, realm: str, method: str, path: str, body: bytes,
                             status: int) -> None:  # fmt: skip
    with api.client(admin_token) as client:
        reply = client.request(method, f"/v1/realms/{realm}{path}", content=body,
                               headers={"Content-Type": "application/json"})  # fmt: skip
    assert reply.status_code == status, reply.text
    if status == 422:
        assert all(set(problem) == {"field", "rule"} for problem in reply.json()["errors"])
