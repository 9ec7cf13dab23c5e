"""`mailworker serve`: the HTTP API and the web console (worker/http/), on uvicorn.

    mailworker serve                          # 127.0.0.1:8025 (MAILWORKER_HTTP_HOST, MAILWORKER_HTTP_PORT)
    mailworker serve --host 0.0.0.0 --port 8025

It keeps no state: run as many as you like behind a load balancer (same Redis, same key prefix). It needs
MAILWORKER_SECRET_KEY only for what decrypts or seals a secret (saving settings with a password, Test
Connection's settings); producers' endpoints need none.
"""

from __future__ import annotations

import argparse
import logging
import socket
from typing import Any

from config.errors import ConfigError

log = logging.getLogger("mailworker.http")


def register(subparsers: Any) -> None:
    serve = subparsers.add_parser("serve", help="run the HTTP API and the web console")
    serve.add_argument(
        "--host", default=None, help="address to listen on (default MAILWORKER_HTTP_HOST, 127.0.0.1)"
    )
    serve.add_argument("--port", type=int, default=None, help="port (default MAILWORKER_HTTP_PORT, 8025)")
    serve.set_defaults(handler=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from config.settings import get_settings
    from worker.http.app import create_app
    from worker.logs import configure_logging

    settings = get_settings()
    configure_logging(settings, worker="serve", whole_process=True)
    host = args.host or settings.http_host
    port = settings.http_port if args.port is None else args.port
    listening = listen(host, port)
    log.info("serving the HTTP API and the console on http://%s:%d", host, port)
    # Our logging (JSON when configured), our proxy rule (MAILWORKER_HTTP_TRUSTED_PROXIES), no Server header.
    uvicorn.run(create_app(settings), fd=listening.fileno(), log_config=None, proxy_headers=False,
                server_header=False, access_log=False)  # fmt: skip
    return 0


def listen(host: str, port: int) -> socket.socket:
    """The listening socket, or one line naming the variables when the address cannot be had (in use, not
    this machine's): uvicorn would log a traceback-like error and exit 3, which means 'no such thing' here."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as error:
        raise ConfigError(
            f"MAILWORKER_HTTP_HOST / MAILWORKER_HTTP_PORT: cannot listen on {host}:{port} ({error.strerror or error})"
        ) from None
    return sock
