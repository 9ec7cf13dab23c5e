"""The web console in a real headless Chromium (Debian's, tests/support/browser.py) against the real app on
uvicorn, the real Redis, a real Celery worker and a real SMTP server on loopback: what an admin clicks.

`make screenshots` runs these with MAILWORKER_SCREENSHOTS=docs/img: the Email tab and a bulk job's page
are saved for the README and docs/console.md.
"""

from __future__ import annotations

import re
import socket
import time
from typing import Any

import httpx
import pytest

from tests.support.browser import screenshot
from tests.support.http import ApiServer
from tests.support.smtp_server import SmtpTestServer
from worker.runtime import runtime

pytestmark = pytest.mark.integration

XSS = "<script>alert(1)</script>"


def sign_in(page: Any, api: ApiServer, token: str) -> None:
    page.goto(f"{api.url}/console/")
    assert page.url == f"{api.url}/console/sign-in"  # not signed in yet: sent to the sign-in page
    page.fill("#token", token)
    page.click("button[type=submit]")
    page.wait_for_url(f"{api.url}/console/")


def open_email_tab(page: Any, api: ApiServer, realm: str) -> None:
    page.goto(f"{api.url}/console/realms/{realm}/email")
    assert page.inner_text("h1") == realm


def switch(page: Any, name: str) -> None:
    """Flip a toggle as an admin does: a click on its switch (the checkbox itself is hidden under it)."""
    page.click(f"#field-{name} .slider")


def wait_until(probe: Any, timeout: float = 30.0) -> Any:
    """Poll `probe()` until it returns something true (no page-side eval: the page's CSP forbids it)."""
    deadline = time.monotonic() + timeout
    while not (value := probe()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)
    return value


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed when the block ends: nothing listens there


def test_sign_in_and_see_the_realms(page: Any, api: ApiServer, admin_token: str, realm: str,
                                    smtp_server: SmtpTestServer) -> None:  # fmt: skip
    runtime().store.save(realm, smtp_server.settings_dict())
    page.goto(f"{api.url}/console/sign-in")
    page.fill("#token", "mwt_wrong")
    page.click("button[type=submit]")
    assert "not a valid token" in page.inner_text("#sign-in-error")
    sign_in(page, api, admin_token)
    assert page.locator("#realms").get_by_role("link", name=realm).is_visible()
    page.click("text=Sign out")
    page.wait_for_url(f"{api.url}/console/sign-in")


def test_fill_the_email_tab_and_save_the_version_goes_up(
    page: Any, api: ApiServer, admin_token: str, realm: str, smtp_server: SmtpTestServer
) -> None:
    runtime().store.save(realm, smtp_server.settings_dict())
    sign_in(page, api, admin_token)
    open_email_tab(page, api, realm)
    assert page.inner_text("#version") == "1"
    page.fill("#f-from_display_name", "Acme IAM")
    page.fill("#f-reply_to", "help@acme.example")
    page.fill("#f-reply_to_display_name", "Acme Help")
    page.fill("#f-envelope_from", "bounces@acme.example")
    page.fill("#f-rate_limit_per_hour", "500")
    assert not page.is_visible("#field-username")  # login fields show only with Authentication on
    switch(page, "auth")
    assert page.is_visible("#field-password") and not page.is_visible("#field-oauth_client_id")
    page.select_option("#f-auth_type", "xoauth2")
    assert page.is_visible("#field-oauth_client_id") and not page.is_visible("#field-password")
    page.select_option("#f-auth_type", "password")
    page.fill("#f-username", "mailer")
    page.fill("#f-password", "pw-typed-in")
    page.click("#save")
    page.wait_for_url(re.compile(r".*\?saved=2$"))
    assert page.inner_text("#version") == "2"
    assert "Saved as version 2" in page.inner_text("#notice")
    assert (
        page.input_value("#f-password") == ""
        and page.get_attribute("#f-password", "placeholder") == "**********"
    )
    saved = runtime().store.saved(realm)
    assert saved is not None
    assert (saved.settings.from_display_name, saved.settings.reply_to_display_name, saved.settings.envelope_from,
            saved.settings.rate_limit_per_hour, saved.settings.username, saved.settings.secret("password")) == (
        "Acme IAM", "Acme Help", "bounces@acme.example", 500, "mailer", "pw-typed-in")  # fmt: skip


def test_ssl_and_starttls_both_on_shows_the_error_next_to_the_field(
    page: Any, api: ApiServer, admin_token: str, realm: str, smtp_server: SmtpTestServer
) -> None:
    runtime().store.save(realm, smtp_server.settings_dict())
    sign_in(page, api, admin_token)
    open_email_tab(page, api, realm)
    switch(page, "ssl")
    switch(page, "starttls")
    page.click("#save")
    assert page.inner_text("#form-errors") == "Not saved: 1 field to fix, marked below (Enable SSL)."
    error = page.locator("#field-ssl .field-error")
    assert "ssl and starttls cannot both be on" in error.inner_text()
    assert error.is_visible()
    assert page.locator(".field-error").count() == 1  # only there
    assert page.is_checked("#f-ssl") and page.is_checked("#f-starttls")  # the form as the admin left it
    assert page.inner_text("#version") == "1" and runtime().store.version(realm) == 1


def test_test_connection_against_the_live_server_says_ok(
    page: Any, api: ApiServer, admin_token: str, realm: str, smtp_server: SmtpTestServer, celery_worker: Any
) -> None:
    runtime().store.save(realm, smtp_server.settings_dict(port=closed_port()))  # saved: a dead port
    sign_in(page, api, admin_token)
    open_email_tab(page, api, realm)
    page.fill("#f-from_display_name", "Acme IAM")
    page.fill("#f-port", str(smtp_server.port))  # the form, not what is saved, is tested
    page.click("#test")
    result = page.locator("#test-result")
    assert result.get_attribute("data-ok") == "true", result.inner_text()
    assert "OK: the settings work" in result.inner_text()
    assert page.input_value("#f-port") == str(smtp_server.port) and page.inner_text("#draft") != "none"
    assert runtime().store.version(realm) == 1  # nothing saved
    screenshot(page, "console-email-tab")


def test_test_connection_against_a_closed_port_fails_at_connect_with_its_hint(
    page: Any, api: ApiServer, admin_token: str, realm: str, smtp_server: SmtpTestServer, celery_worker: Any
) -> None:
    runtime().store.save(realm, smtp_server.settings_dict())
    sign_in(page, api, admin_token)
    open_email_tab(page, api, realm)
    port = closed_port()
    page.fill("#f-port", str(port))
    page.click("#test")
    result = page.locator("#test-result")
    assert result.get_attribute("data-ok") == "false"
    assert page.inner_text("#failed-stage") == "connect"
    hint = page.inner_text("#test-hint")  # worker/probe/hints.py, "connection refused"
    assert f"Nothing accepts connections on {smtp_server.host}:{port} (connection refused)" in hint, hint


def test_revert_discards_the_draft(
    page: Any, api: ApiServer, admin_token: str, realm: str, smtp_server: SmtpTestServer, celery_worker: Any
) -> None:
    runtime().store.save(realm, smtp_server.settings_dict())
    sign_in(page, api, admin_token)
    open_email_tab(page, api, realm)
    page.fill("#f-host", "localhost")
    page.click("#test")  # the form becomes the draft
    page.wait_for_selector("#test-result")
    assert page.input_value("#f-host") == "localhost" and runtime().store.draft(realm) is not None
    page.click("#revert")
    page.wait_for_url(re.compile(r".*\?reverted=1$"))
    assert page.inner_text("#draft") == "none" and "Draft discarded" in page.inner_text("#notice")
    assert page.input_value("#f-host") == smtp_server.host
    assert runtime().store.draft(realm) is None and runtime().store.version(realm) == 1


def test_a_form_posted_without_its_csrf_token_gets_403(
    page: Any, api: ApiServer, admin_token: str, realm: str, smtp_server: SmtpTestServer
) -> None:
    runtime().store.save(realm, smtp_server.settings_dict())
    sign_in(page, api, admin_token)
    open_email_tab(page, api, realm)
    cookies = {c["name"]: c["value"] for c in page.context.cookies() if c["name"] == "mailworker_session"}
    form = {
        "from": "noreply@example.com",
        "host": "attacker.example",
        "port": "25",
        "version": "1",
        "draft_id": "",
    }
    with httpx.Client(base_url=api.url, cookies=cookies) as client:
        assert client.get(f"/console/realms/{realm}/email").status_code == 200  # the cookie is a session
        refused = client.post(f"/console/realms/{realm}/email/save", data=form)
        assert refused.status_code == 403
        csrf = page.get_attribute("input[name=csrf]", "value")
        taken = client.post(
            f"/console/realms/{realm}/email/save", data={**form, "csrf": csrf, "host": "127.0.0.1"}
        )
        assert taken.status_code == 303  # the same form with its token goes through
    assert runtime().store.version(realm) == 2


def test_a_script_in_a_display_name_shows_as_text_everywhere(
    page: Any, api: ApiServer, admin_token: str, realm: str, smtp_server: SmtpTestServer
) -> None:
    runtime().store.save(realm, smtp_server.settings_dict())
    sign_in(page, api, admin_token)
    open_email_tab(page, api, realm)
    page.fill("#f-from_display_name", XSS)
    page.fill("#f-reply_to", "help@example.com")
    page.fill("#f-reply_to_display_name", XSS)
    page.click("#save")
    page.wait_for_url(re.compile(r".*\?saved=2$"))
    assert page.input_value("#f-from_display_name") == XSS
    assert page.input_value("#f-reply_to_display_name") == XSS
    page.goto(f"{api.url}/console/")
    row = page.locator("#realms tr", has_text=realm)
    assert f"{XSS} <noreply@example.com>" in row.locator(".sender").inner_text()
    page.goto(f"{api.url}/console/realms/{realm}/history")
    assert XSS in page.locator("#history").inner_text()
    assert page.dialogs == []  # no alert ran, on any of the pages
    assert page.locator("script:not([src])").count() == 0


def test_a_bulk_jobs_progress_bar_moves_live_and_cancel_stops_it(
    page: Any, api: ApiServer, admin_token: str, realm: str, smtp_server: SmtpTestServer, celery_worker: Any
) -> None:
    from tasks import api as python_api

    # Five a second: slow enough to watch the bar move, and to cancel before the end.
    runtime().store.save(realm, smtp_server.settings_dict(rate_limit_per_second=5))
    recipients = [f"reader{i}@example.com" for i in range(100)]
    job_id = python_api.send_bulk(realm, "notice", recipients, chunk_size=5,
                                  context={"notice": {"subject": "Maintenance", "body": "Sunday 02:00 UTC"}})  # fmt: skip
    sign_in(page, api, admin_token)
    page.goto(f"{api.url}/console/bulk/{job_id}")
    # No reload: the page's script polls and moves the bar.
    wait_until(lambda: float(page.get_attribute("#bulk-bar", "value") or 0) >= 10)
    sent = int(page.inner_text("[data-field=sent]"))
    assert 0 < sent < 100 and page.inner_text("[data-field=state]") == "running"
    screenshot(page, "console-bulk-progress")
    page.click("#cancel")
    page.wait_for_selector("#bulk[data-finished=true]", timeout=30_000)
    assert page.inner_text("[data-field=state]") == "cancelled"
    progress = python_api.bulk_progress(job_id)
    assert progress["cancelled"] > 0 and progress["sent"] + progress["failed"] + progress["cancelled"] == 100
    assert int(page.inner_text("[data-field=cancelled]")) == progress["cancelled"]
