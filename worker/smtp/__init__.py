"""SMTP: one path for delivery, bulk and Test Connection.

failures.py  the failure vocabulary (Kind, SmtpFailure) and the conversion of exceptions
connect.py   opening a session step by step (resolve, connect, TLS, EHLO, AUTH): Opener, open_session
auth.py      AUTH: the mechanism chosen, the login
session.py   one open session: send, check, close (SmtpSession)
pipeline.py  several messages on one session with PIPELINING
wire.py      the DATA payload, a transaction's result
pool.py      the worker process's open sessions (SessionPool)
"""

from worker.smtp.connect import Opener, open_session, tls_context
from worker.smtp.failures import Kind, SmtpFailure
from worker.smtp.pool import SessionPool
from worker.smtp.session import SmtpSession
from worker.smtp.wire import SendResult

__all__ = [
    "Kind",
    "Opener",
    "SendResult",
    "SessionPool",
    "SmtpFailure",
    "SmtpSession",
    "open_session",
    "tls_context",
]
