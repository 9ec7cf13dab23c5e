"""SMTP AUTH the one way every session logs in: the mechanism chosen, the login itself.

One order, one attempt: PLAIN, else LOGIN, else CRAM-MD5. PLAIN and LOGIN carry a UTF-8 password (over
TLS); CRAM-MD5 is the last resort (ASCII only, and the server must keep the password in clear). A second
mechanism after a 535 would only count against the account's lock-out. XOAUTH2 with the realm's token.
"""

from __future__ import annotations

import base64
import smtplib
from collections.abc import Callable

from worker.smtp.failures import Kind, SmtpFailure, reply_text

PASSWORD_MECHANISMS = ("PLAIN", "LOGIN", "CRAM-MD5")


def password_mechanism(offered: list[str]) -> str | None:
    """The mechanism to log in with among those the server offers (upper case), or None."""
    return next((m for m in PASSWORD_MECHANISMS if m in offered), None)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def xoauth2_blob(username: str, token: str) -> str:
    return base64.b64encode(f"user={username}\x01auth=Bearer {token}\x01\x01".encode()).decode("ascii")


def password_login(
    smtp: smtplib.SMTP, mechanism: str, username: str, password: str
) -> tuple[int, bytes | str]:
    """One AUTH with `mechanism`; SmtpFailure with the server's code when it refuses."""
    reply: bytes | str
    if mechanism == "PLAIN":  # RFC 4616, UTF-8 (smtplib.login would fail on a non-ASCII password)
        code, reply = smtp.docmd("AUTH", f"PLAIN {_b64(chr(0) + username + chr(0) + password)}")
    elif mechanism == "LOGIN":
        code, reply = smtp.docmd("AUTH", f"LOGIN {_b64(username)}")
        if code == 334:
            code, reply = smtp.docmd(_b64(password))
    else:
        try:
            smtp.user, smtp.password = username, password
            code, reply = smtp.auth("CRAM-MD5", smtp.auth_cram_md5, initial_response_ok=True)
        except smtplib.SMTPAuthenticationError as error:
            code, reply = error.smtp_code, error.smtp_error
        except UnicodeError:  # smtplib encodes CRAM-MD5 as ASCII; the error object would carry the password
            raise SmtpFailure(None, "CRAM-MD5 (the only AUTH offered) cannot carry a non-ASCII username or "
                              "password", "auth", kind=Kind.AUTH_MECHANISM) from None  # fmt: skip
        finally:
            smtp.password = ""
    if code != 235:
        raise SmtpFailure(code, reply_text(reply), "auth")
    return code, reply


def xoauth2_login(
    smtp: smtplib.SMTP, username: str, token: str, before_command: Callable[[], None] = lambda: None
) -> tuple[int, bytes]:
    """AUTH XOAUTH2; on a refusal the server sends an error challenge (base64 JSON) first, answered with an
    empty line to get the final reply (as Gmail and Microsoft 365 do)."""
    code, reply = smtp.docmd("AUTH", f"XOAUTH2 {xoauth2_blob(username, token)}")
    if code == 334:
        before_command()
        code, reply = smtp.docmd("")
    if code != 235:
        raise SmtpFailure(code, reply_text(reply), "auth")
    return code, reply
