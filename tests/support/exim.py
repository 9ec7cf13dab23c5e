"""A real MTA generating a real DSN: Debian's exim4 run once (`-odi`, no daemon, nothing listening), with a
configuration of its own that refuses the recipient with a 550 and delivers the bounce over SMTP to a port
on 127.0.0.1. Needs the exim4 binary and root (exim takes an alternate configuration only from root);
`available()` says whether this machine can."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

EXIM = shutil.which("exim4") or shutil.which("exim")

CONFIG = """
primary_hostname = mta.test
qualify_domain = mta.test
spool_directory = {spool}
log_file_path = {spool}/%slog
exim_user = {user}
exim_group = {user}
daemon_smtp_ports =
host_lookup =
rfc1413_hosts =
bounce_return_message = true
bounce_return_size_limit = 100K

begin routers

bounce_receiver:
  driver = manualroute
  domains = {domain}
  local_parts = {local}
  local_part_suffix = +*
  local_part_suffix_optional
  route_list = * 127.0.0.1
  transport = to_receiver
  self = send

refused:
  driver = redirect
  data = :fail: 550 5.1.1 <$local_part@$domain>: unknown user
  allow_fail

begin transports

to_receiver:
  driver = smtp
  port = {port}
  allow_localhost
  hosts_avoid_tls = *

begin retry
*  *  F,1m,1m
"""


def available() -> bool:
    return EXIM is not None and os.geteuid() == 0


def bounce_with_exim(workdir: Path, *, sender: str, rcpt: str, message: bytes, bounce_address: str,
                     port: int) -> subprocess.CompletedProcess[bytes]:  # fmt: skip
    """Submit `message` from `sender` to `rcpt`; exim refuses rcpt and bounces to the receiver on `port`."""
    assert EXIM is not None
    # exim works as its own user after starting: the directory must be reachable by it (pytest's tmp_path
    # is under a root-only directory).
    workdir.chmod(0o755)
    spool = workdir / "spool"
    spool.mkdir(parents=True, exist_ok=True)
    user = "Debian-exim"
    shutil.chown(spool, user, user)
    local, _, domain = bounce_address.partition("@")
    config = workdir / "exim.conf"
    config.write_text(CONFIG.format(spool=spool, user=user, domain=domain, local=local, port=port))
    return subprocess.run([EXIM, "-C", str(config), "-odi", "-oi", "-f", sender, rcpt], input=message,
                          capture_output=True, timeout=60)  # fmt: skip
