"""`make demo`, the README's first command: the real pipeline on an in-memory broker, quiet, from a clean
environment (no MAILWORKER_* set, no Redis). Its SMTP server listens on 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
import sys
from email import message_from_bytes, policy
from pathlib import Path

import pytest

from worker.demo import outbox_name

ROOT = Path(__file__).resolve().parents[1]


def demo(cwd: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILWORKER_")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "worker.demo", *argv], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


@pytest.mark.parametrize(
    "subject, name",
    [
        ("Setzen Sie Ihr Passwort zurück", "2-setzen-sie-ihr-passwort-zuruck.eml"),
        ("Tentative de connexion échouée", "2-tentative-de-connexion-echouee.eml"),
        ("../../etc/passwd", "2-etc-passwd.eml"),
        ("ログイン", "2-message.eml"),
        ("a" * 100, "2-" + "a" * 48 + ".eml"),
    ],
)
def test_outbox_names_are_ascii_and_stay_in_the_outbox(subject: str, name: str) -> None:
    assert outbox_name(2, subject) == name


def test_the_demo_delivers_three_mails_and_shows_only_them(tmp_path: Path) -> None:
    done = demo(tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    output = done.stdout + done.stderr
    for noise in ("WARNING", "INFO", "Traceback", "mail.log", ">> b'"):
        assert noise not in output, noise
    assert "results: ['sent', 'sent', 'sent']" in done.stdout
    files = sorted((tmp_path / "outbox").iterdir())
    assert [f.name.isascii() for f in files] == [True] * 3
    mails = [message_from_bytes(f.read_bytes(), policy=policy.default) for f in files]
    assert {str(m["From"]) for m in mails} == {"Demo IAM <noreply@demo.example>"}
    texts = [m.get_body(preferencelist=("plain",)).get_content() for m in mails]  # type: ignore[union-attr]
    assert all("Demo Realm" in text for text in texts)  # one realm name, the event's notice too


def test_verbose_brings_back_the_log_lines_and_the_smtp_conversation(tmp_path: Path) -> None:
    done = demo(tmp_path, "--verbose")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "mail.log" in done.stderr and "outcome=sent" in done.stderr
