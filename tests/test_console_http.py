"""The web console's handlers over real HTTP (the real app on uvicorn, real Redis), without a browser:
sign-in and sessions, CSRF, realm limits, the Email tab's buttons and their conflicts. The other pages:
tests/test_console_pages.py; the browser tests (tests/test_console_browser.py) click through the same."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.support.console import csrf_of, hidden_fields, saved_realm, sign_in, signed_in
from tests.support.http import ApiServer, new_token
from tests.support.smtp_server import SmtpTestServer
from worker.runtime import runtime

pytestmark = pytest.mark.integration


def email_form(html: str, **changes: Any) -> dict[str, Any]:
    """The Email tab's form as a browser would post it: every text field, the ticked toggles, `changes`."""
    form = dict(hidden_fields(html))
    for name, value in re.findall(r'<input type="text" id="f-[^"]+" name="([^"]+)" value="([^"]*)"', html):
        form[name] = (
            value.replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">").replace("&#34;", '"')
        )
    for name in re.findall(r'<input type="checkbox" id="f-[^"]+" name="([^"]+)" checked', html):
        form[name] = "on"
    for name, value in re.findall(
        r'<select id="f-[^"]+" name="([^"]+)">.*?<option value="([^"]+)" selected', html, re.S
    ):
        form[name] = value
    for name, value in changes.items():
        if value is False:
            form.pop(name, None)
        else:
            form[name] = "on" if value is True else str(value)
    return form


def field_errors(html: str, name: str) -> list[str]:
    block = re.search(rf'<div class="field[^"]*" id="field-{name}"[^>]*>(.*?)</div>\s*</div>', html, re.S)
    assert block, f"no field {name} on the page"
    return re.findall(r'<p class="field-error">(.*?)</p>', block.group(1))


# ---- sign-in, sessions, CSRF ---------------------------------------------------------------------------


def test_pages_redirect_to_sign_in_and_the_sign_in_sets_a_strict_http_only_cookie(
    api: ApiServer, admin_token: str
) -> None:
    with api.client() as client:
        for path in ("/console/", "/console/dead-letters", "/console/realms/acme/email", "/console/bulk"):
            reply = client.get(path)
            assert (reply.status_code, reply.headers["location"]) == (303, "/console/sign-in"), path
        assert client.get("/console/data/bulk/bulk-x").status_code == 401  # JSON: no redirect
        assert client.get("/console", follow_redirects=True).url.path == "/console/sign-in"
        reply = sign_in(client, admin_token)
        assert reply.status_code == 303
        cookie = next(
            v for k, v in reply.headers.multi_items() if k == "set-cookie" and "mailworker_session" in v
        )
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/console" in cookie
        assert "Secure" not in cookie  # plain http on loopback; behind TLS it is set (next test)
        assert client.get("/console/").status_code == 200


def test_behind_a_trusted_tls_proxy_the_cookie_is_secure(
    api: ApiServer, admin_token: str, monkeypatch: Any
) -> None:
    from worker.http.guards import parse_networks

    monkeypatch.setattr(api.app.state.context, "trusted", parse_networks("127.0.0.1"))
    with api.client() as client:
        client.headers["X-Forwarded-Proto"] = "https"
        form = client.get("/console/sign-in")
        assert "Secure" in form.headers["set-cookie"]
        # httpx, like a browser, keeps a Secure cookie off plain http: the proxy's side is TLS, not ours.
        cookie = f"mailworker_sign_in={form.cookies['mailworker_sign_in']}"
        reply = client.post("/console/sign-in", data={"csrf": csrf_of(form.text), "token": admin_token},
                            headers={"Cookie": cookie})  # fmt: skip
        assert reply.status_code == 303
        assert "Secure" in reply.headers["set-cookie"] and "HttpOnly" in reply.headers["set-cookie"]


def test_sign_in_refuses_a_bad_token_a_producer_token_and_a_form_without_its_csrf_token(
    api: ApiServer, producer_token: str, admin_token: str
) -> None:
    with api.client() as client:
        assert sign_in(client, "mwt_not-a-token").status_code == 401
        assert sign_in(client, producer_token).status_code == 403
        client.get("/console/sign-in")
        assert client.post("/console/sign-in", data={"token": admin_token}).status_code == 403
        assert (
            client.post("/console/sign-in", data={"token": admin_token, "csrf": "guess"}).status_code == 403
        )
        assert client.get("/console/").status_code == 303  # still signed out


def test_failed_sign_ins_count_against_the_same_limit_as_the_api(
    api: ApiServer, admin_token: str, monkeypatch: Any
) -> None:
    from tests.test_http_core import forget_failed_authentications

    forget_failed_authentications()
    monkeypatch.setattr(api.app.state.context.settings, "http_auth_failures_per_minute", 3)
    try:
        with api.client() as client:
            codes = [sign_in(client, "mwt_wrong").status_code for _ in range(2)]
            codes.append(client.get("/v1/jobs/x", headers={"Authorization": "Bearer mwt_wrong"}).status_code)
            codes.append(sign_in(client, admin_token).status_code)  # even the right token waits now
            assert codes == [401, 401, 401, 429]
            assert "Too many failed sign-ins" in sign_in(client, admin_token).text
    finally:
        forget_failed_authentications()


def test_sign_out_and_revoking_the_token_end_the_session(api: ApiServer) -> None:
    from worker.http.tokens import TokenStore

    rt = runtime()
    created = TokenStore(rt.redis, rt.keys).create("admin", [], "revoked later")
    with signed_in(api, created.token) as client:
        csrf = csrf_of(client.get("/console/").text)
        assert client.post("/console/sign-out", data={"csrf": csrf}).status_code == 303
        assert client.get("/console/").status_code == 303
    with signed_in(api, created.token) as client:
        assert client.get("/console/").status_code == 200
        TokenStore(rt.redis, rt.keys).revoke(created.record.id)
        assert client.get("/console/").status_code == 303


@pytest.mark.parametrize("csrf", [None, "", "wrong"])
def test_a_form_posted_without_its_csrf_token_is_403_and_changes_nothing(
    api: ApiServer, admin_token: str, realm: str, csrf: str | None
) -> None:
    saved_realm(realm)
    with signed_in(api, admin_token) as client:
        form = email_form(client.get(f"/console/realms/{realm}/email").text, host="attacker.example")
        form.pop("csrf")
        if csrf is not None:
            form["csrf"] = csrf
        for action in ("save", "test", "revert"):
            reply = client.post(f"/console/realms/{realm}/email/{action}", data=form)
            assert reply.status_code == 403 and "CSRF" in reply.text, action
        assert client.post(f"/console/realms/{realm}/rollback", data={"version": "1"}).status_code == 403
    assert runtime().store.version(realm) == 1 and runtime().store.draft(realm) is None


def test_console_pages_carry_the_strict_csp_and_no_inline_script_or_style(
    api: ApiServer, admin_token: str, realm: str
) -> None:
    saved_realm(realm)
    with signed_in(api, admin_token) as client:
        for path in ("/console/", f"/console/realms/{realm}/email", f"/console/realms/{realm}/history",
                     f"/console/realms/{realm}/stats", "/console/dead-letters", "/console/bulk", "/console/sign-in"):  # fmt: skip
            reply = client.get(path)
            assert reply.status_code == 200, path
            assert "script-src 'self';" in reply.headers["content-security-policy"]
            assert reply.headers["x-frame-options"] == "DENY"
            assert not re.search(r"<script(?![^>]*\bsrc=)", reply.text), path
            assert not re.search(r"<style|\sstyle=|\son[a-z]+=", reply.text), path
        static = client.get("/console/static/console.js")
        assert static.status_code == 200 and "javascript" in static.headers["content-type"]


# ---- realms and limits -----------------------------------------------------------------------------------


def test_a_realm_limited_token_sees_only_its_realms(api: ApiServer, realm: str) -> None:
    other = saved_realm(f"{realm}-other")
    saved_realm(realm)
    with signed_in(api, new_token("admin", (realm,))) as client:
        listing = client.get("/console/").text
        assert realm in listing and other not in listing
        hidden = client.get(f"/console/realms/{other}/email")
        missing = client.get(f"/console/realms/{realm}-none/email")
        assert hidden.status_code == missing.status_code == 404
        assert client.get(f"/console/realms/{other}/history").status_code == 404
        assert client.get(f"/console/realms/{other}/stats").status_code == 404
        csrf = csrf_of(listing)
        assert client.post(f"/console/realms/{other}/email/revert", data={"csrf": csrf}).status_code == 404
    with signed_in(api, new_token("admin")) as client:
        listing = client.get("/console/").text
        assert realm in listing and other in listing


# ---- the Email tab ----------------------------------------------------------------------------------------


def test_save_applies_the_whole_form_as_the_next_version(
    api: ApiServer, admin_token: str, realm: str
) -> None:
    saved_realm(realm, reply_to="help@example.com", rate_limit_per_hour=100)
    with signed_in(api, admin_token) as client:
        page = client.get(f"/console/realms/{realm}/email").text
        form = email_form(page, port="587", starttls=True, from_display_name="Acme IAM", reply_to="",
                          rate_limit_per_hour="")  # fmt: skip
        reply = client.post(f"/console/realms/{realm}/email/save", data=form)
        assert (reply.status_code, reply.headers["location"]) == (
            303,
            f"/console/realms/{realm}/email?saved=2",
        )
        shown = client.get(reply.headers["location"]).text
        assert 'id="version">2<' in shown and "Saved as version 2." in shown
    saved = runtime().store.saved(realm)
    assert saved is not None
    assert (saved.settings.port, saved.settings.starttls, saved.settings.from_display_name) == (
        587,
        True,
        "Acme IAM",
    )
    assert (saved.settings.reply_to, saved.settings.rate_limit_per_hour) == (None, None)
    assert saved.by == "console: test"


def test_a_new_realm_opens_with_the_defaults_and_its_first_save_is_version_1(
    api: ApiServer, admin_token: str, realm: str
) -> None:
    with signed_in(api, admin_token) as client:
        opened = client.get("/console/open", params={"name": realm})
        assert opened.headers["location"] == f"/console/realms/{realm}/email"
        page = client.get(opened.headers["location"]).text
        assert 'id="version">0<' in page and 'id="draft">none<' in page
        empty = client.post(f"/console/realms/{realm}/email/save", data=email_form(page))
        assert empty.status_code == 422
        assert field_errors(empty.text, "from") == ["is required"] and field_errors(empty.text, "host") == [
            "is required"
        ]
        reply = client.post(f"/console/realms/{realm}/email/save",
                            data=email_form(page, **{"from": "noreply@example.com", "host": "127.0.0.1"}))  # fmt: skip
        assert reply.headers["location"].endswith("?saved=1")
        assert realm in client.get("/console/").text
    saved = runtime().store.saved(realm)
    assert saved is not None and saved.settings.port == 25 and saved.settings.verify_tls


def test_errors_appear_next_to_their_fields_and_nothing_is_saved(
    api: ApiServer, admin_token: str, realm: str
) -> None:
    saved_realm(realm)
    with signed_in(api, admin_token) as client:
        page = client.get(f"/console/realms/{realm}/email").text
        both = client.post(
            f"/console/realms/{realm}/email/save",
            data=email_form(page, ssl=True, starttls=True, reply_to="not an address"),
        )
        assert both.status_code == 422
        assert field_errors(both.text, "reply_to")[0].startswith("not a valid address")
        assert "cannot both be on" in " ".join(field_errors(both.text, "ssl"))
        assert field_errors(both.text, "starttls") == [] and field_errors(both.text, "host") == []
        form = email_form(page, port="99999", from_display_name="Kept")
        reply = client.post(f"/console/realms/{realm}/email/save", data=form)
        assert reply.status_code == 422
        assert field_errors(reply.text, "port") == ["must be a whole number from 1 to 65535"]
        assert 'value="99999"' in reply.text and 'value="Kept"' in reply.text  # the form as posted, to fix
    assert runtime().store.version(realm) == 1


def test_the_password_is_never_shown_an_empty_field_keeps_it_and_a_new_host_asks_for_it_again(
    api: ApiServer, admin_token: str, realm: str
) -> None:
    saved_realm(realm, auth=True, username="mailer", password="s3cret-pw")
    with signed_in(api, admin_token) as client:
        page = client.get(f"/console/realms/{realm}/email").text
        assert "s3cret-pw" not in page and 'placeholder="**********"' in page
        kept = client.post(f"/console/realms/{realm}/email/save", data=email_form(page, timeout="7"))
        assert kept.status_code == 303
        saved = runtime().store.saved(realm)
        assert saved is not None and saved.settings.secret("password") == "s3cret-pw"
        page = client.get(f"/console/realms/{realm}/email").text
        moved = client.post(
            f"/console/realms/{realm}/email/save", data=email_form(page, host="smtp.other.example")
        )
        assert moved.status_code == 422
        assert "enter the password again" in " ".join(field_errors(moved.text, "password"))
        retyped = client.post(f"/console/realms/{realm}/email/save",
                              data=email_form(page, host="smtp.other.example", password="new-pw"))  # fmt: skip
        assert retyped.status_code == 303
    saved = runtime().store.saved(realm)
    assert saved is not None and (saved.version, saved.settings.secret("password")) == (3, "new-pw")


def test_save_or_test_over_a_version_saved_or_a_draft_started_meanwhile_is_a_conflict(
    api: ApiServer, admin_token: str, realm: str
) -> None:
    saved_realm(realm)
    with signed_in(api, admin_token) as client:
        page = client.get(f"/console/realms/{realm}/email").text
        runtime().store.save(realm, {"port": 2526})  # another admin, version 2
        for action in ("save", "test"):
            reply = client.post(f"/console/realms/{realm}/email/{action}", data=email_form(page, port="2600"))
            assert reply.status_code == 409 and "saved by someone else" in reply.text, action
            assert 'value="2600"' in reply.text  # the admin's edit is still on the page, to re-apply
        assert runtime().store.draft(realm) is None
        page = client.get(f"/console/realms/{realm}/email").text
        runtime().store.set_draft(realm, {"port": 2700})  # another admin's pending draft
        for action in ("save", "test"):
            reply = client.post(f"/console/realms/{realm}/email/{action}", data=email_form(page, port="2600"))
            assert reply.status_code == 409 and "started draft" in reply.text, action
    saved = runtime().store.saved(realm)
    assert saved is not None and (saved.version, saved.settings.port) == (2, 2526)


def test_test_connection_makes_the_form_the_draft_and_revert_discards_it(
    api: ApiServer, admin_token: str, realm: str, celery_worker: Any, smtp_server: SmtpTestServer
) -> None:
    saved_realm(realm, port=1)  # saved: a port nothing listens on
    with signed_in(api, admin_token) as client:
        page = client.get(f"/console/realms/{realm}/email").text
        form = email_form(page, host=smtp_server.host, port=str(smtp_server.port))
        tested = client.post(f"/console/realms/{realm}/email/test", data=form)
        assert tested.status_code == 200 and 'data-ok="true"' in tested.text, tested.text
        draft = runtime().store.draft(realm)
        assert draft is not None and draft.settings.port == smtp_server.port
        assert runtime().store.version(realm) == 1  # not saved
        assert hidden_fields(tested.text)["draft_id"] == draft.draft_id  # Save names the draft it shows
        reverted = client.post(f"/console/realms/{realm}/email/revert", data={"csrf": csrf_of(tested.text)})
        assert reverted.headers["location"].endswith("?reverted=1")
        assert runtime().store.draft(realm) is None
        assert 'value="1"' in client.get(reverted.headers["location"]).text  # the saved port again


def test_test_connection_without_a_worker_says_so_beside_the_form(
    api: ApiServer, admin_token: str, realm: str, monkeypatch: Any
) -> None:
    from config.errors import WorkerUnavailable

    def no_worker(*args: Any, **kwargs: Any) -> Any:
        raise WorkerUnavailable("no live worker serves the control queue")

    monkeypatch.setattr("tasks.connection.test_connection", no_worker)
    saved_realm(realm)
    with signed_in(api, admin_token) as client:
        page = client.get(f"/console/realms/{realm}/email").text
        reply = client.post(f"/console/realms/{realm}/email/test", data=email_form(page))
        assert reply.status_code == 200 and "no live worker serves the control queue" in reply.text


def test_the_user_look_up_fields_save_with_the_secret_masked_and_kept(
    api: ApiServer, admin_token: str, realm: str
) -> None:
    saved_realm(realm)
    with signed_in(api, admin_token) as client:
        page = client.get(f"/console/realms/{realm}/email").text
        form = email_form(
            page, iam_url="http://127.0.0.1:9", iam_client_id="mailer", iam_client_secret="kc-s3cret"
        )
        assert client.post(f"/console/realms/{realm}/email/save", data=form).status_code == 303
        page = client.get(f"/console/realms/{realm}/email").text
        assert "kc-s3cret" not in page and 'value="http://127.0.0.1:9"' in page
        # Left empty, the stored secret stays; a new IAM URL asks for it again (it is bound to the URL).
        assert (
            client.post(f"/console/realms/{realm}/email/save", data=email_form(page, timeout="8")).status_code
            == 303
        )
        page = client.get(f"/console/realms/{realm}/email").text
        moved = client.post(
            f"/console/realms/{realm}/email/save", data=email_form(page, iam_url="http://127.0.0.1:10")
        )
        assert moved.status_code == 422 and field_errors(moved.text, "iam_client_secret")
    saved = runtime().store.saved(realm)
    assert (
        saved is not None and saved.version == 3 and saved.settings.secret("iam_client_secret") == "kc-s3cret"
    )
