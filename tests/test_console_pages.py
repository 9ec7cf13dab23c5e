"""The web console's other pages over real HTTP (the real app on uvicorn, real Redis, a real worker and
SMTP server where a page acts on mail): history and rollback, dead letters, bulk jobs, stats, errors."""

from __future__ import annotations

import re
import uuid
from typing import Any

import httpx
import pytest

from tests.support.console import csrf_of, saved_realm, signed_in
from tests.support.http import ApiServer, new_token
from tests.support.smtp_server import SmtpTestServer
from worker.runtime import runtime

pytestmark = pytest.mark.integration


def test_history_lists_versions_and_rollback_saves_an_old_one_again(
    api: ApiServer, admin_token: str, realm: str
) -> None:
    saved_realm(realm)
    runtime().store.save(realm, {"port": 2600})
    with signed_in(api, admin_token) as client:
        page = client.get(f"/console/realms/{realm}/history").text
        assert "Roll back to 1" in page and "Roll back to 2" not in page
        reply = client.post(f"/console/realms/{realm}/rollback", data={"csrf": csrf_of(page), "version": "1"})
        assert reply.headers["location"].endswith("?saved=3")
    saved = runtime().store.saved(realm)
    assert saved is not None and (saved.version, saved.settings.port, saved.by) == (3, 2525, "console: test")


def dead_letter(realm: str, reason: str = "permanent") -> str:
    from worker.jobs.deadletters import DeadLetter
    from worker.jobs.model import new_job

    job = new_job(realm, "notice", f"u-{uuid.uuid4().hex[:6]}@example.com",
                  context={"notice": {"subject": "S", "body": "B"}})  # fmt: skip
    runtime().dead_letters.add(DeadLetter(job_id=job.id, realm=realm, template="notice", to=job.to, reason=reason,
                                          error="550 5.1.1 no such user", attempts=1, job=job.model_dump(mode="json")))  # fmt: skip
    return job.id


def test_dead_letters_filter_requeue_and_delete(
    api: ApiServer, admin_token: str, realm: str, celery_worker: Any, smtp_server: SmtpTestServer
) -> None:
    runtime().store.save(realm, smtp_server.settings_dict())
    other = f"{realm}-other"
    first, second, elsewhere = dead_letter(realm), dead_letter(realm, "exhausted"), dead_letter(other)
    with signed_in(api, admin_token) as client:
        page = client.get("/console/dead-letters", params={"realm": realm}).text
        assert first in page and second in page and elsewhere not in page
        page = client.get("/console/dead-letters", params={"realm": realm, "reason": "exhausted"}).text
        assert second in page and first not in page
        csrf = csrf_of(page)
        requeued = client.post(f"/console/dead-letters/{first}/requeue", data={"csrf": csrf, "realm": realm})
        assert requeued.status_code == 303 and "realm=" in requeued.headers["location"]
        smtp_server.wait_for(1)  # sent again, for real
        deleted = client.post(f"/console/dead-letters/{second}/delete", data={"csrf": csrf})
        assert deleted.status_code == 303
    remaining = {letter.job_id for letter in runtime().dead_letters.list(limit=10**6)}
    assert first not in remaining and second not in remaining and elsewhere in remaining
    with signed_in(api, new_token("admin", (realm,))) as client:
        page = client.get("/console/dead-letters").text
        assert elsewhere not in page
        reply = client.post(f"/console/dead-letters/{elsewhere}/delete", data={"csrf": csrf_of(page)})
        assert reply.status_code == 404
    assert elsewhere in {letter.job_id for letter in runtime().dead_letters.list(limit=10**6)}


def test_a_bulk_job_page_its_progress_data_and_cancel(api: ApiServer, admin_token: str, realm: str) -> None:
    from tasks import api as python_api

    saved_realm(realm)
    recipients = [f"r{i}@example.com" for i in range(30)]
    job_id = python_api.send_bulk(
        realm, "notice", recipients, context={"notice": {"subject": "S", "body": "B"}}
    )
    with signed_in(api, admin_token) as client:
        assert job_id in client.get("/console/bulk").text
        page = client.get(f"/console/bulk/{job_id}")
        assert page.status_code == 200 and f'data-progress-url="/console/data/bulk/{job_id}"' in page.text
        data = client.get(f"/console/data/bulk/{job_id}").json()
        assert (data["job_id"], data["total"], data["realm"]) == (job_id, 30, realm)
        reply = client.post(f"/console/bulk/{job_id}/cancel", data={"csrf": csrf_of(page.text)})
        assert reply.status_code == 303
        assert python_api.bulk_progress(job_id)["state"] in ("cancelled", "done")
    with signed_in(api, new_token("admin", (f"{realm}-other",))) as client:
        assert client.get(f"/console/bulk/{job_id}").status_code == 404
        assert client.get(f"/console/data/bulk/{job_id}").status_code == 404
        assert job_id not in client.get("/console/bulk").text


def test_stats_draw_sent_and_failed_per_hour(api: ApiServer, admin_token: str, realm: str) -> None:
    saved_realm(realm)
    stats = runtime().stats
    stats.count(realm, "sent", 40)
    stats.count(realm, "dead", 10)
    with signed_in(api, admin_token) as client:
        page = client.get(f"/console/realms/{realm}/stats").text
    bars = re.findall(
        r'<rect class="bar (sent|failed)" x="[^"]+" y="[^"]+" width="[^"]+" height="([^"]+)">', page
    )
    assert len(bars) == 48  # 24 hours, two bars each
    tallest = {kind: max(float(h) for k, h in bars if k == kind) for kind in ("sent", "failed")}
    assert tallest["sent"] == 4 * tallest["failed"] > 0
    assert "sent (40)" in page and "failed (10)" in page


def test_an_unknown_page_is_a_page_not_json(api: ApiServer, admin_token: str) -> None:
    with signed_in(api, admin_token) as client:
        reply = client.get("/console/nothing-here")
        assert reply.status_code == 404 and reply.headers["content-type"].startswith("text/html")
        bad = client.get("/console/realms/bad%20name/email")
        assert bad.status_code == 422 and bad.headers["content-type"].startswith("text/html")


def test_sign_in_page_is_reachable_without_a_session(api: ApiServer) -> None:
    reply = httpx.get(f"{api.url}/console/sign-in")
    assert reply.status_code == 200 and 'name="token"' in reply.text
