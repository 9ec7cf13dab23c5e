"""Local SMTP sinks for the benchmark: Postfix's smtp-sink (C) when available, aiosmtpd otherwise.

- `CSink`: Postfix's `smtp-sink -c` (bench/get-smtp-sink.sh fetches it without installing Postfix). It
  advertises PIPELINING and 8BITMIME, accepts and discards, and prints a running `mesg=N` counter on every
  "." it accepts: that counter is the number of messages the server accepted.
- `AioSink`: `python -m bench.sink` processes sharing one port (SO_REUSEPORT: the kernel spreads
  connections over them). Each process appends one line per accepted message, `<time.time()>\t<rcpt>`,
  to its own log file, written when the DATA is complete and before the 250 reply goes out. The bench uses
  one such process as the latency sink (arrival time per recipient) and, when smtp-sink is missing, as
  the bulk sink (reported as such: it is much slower than smtp-sink, the figures are then not comparable).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.harness import ROOT, port_open, wait_until
from tests.support.redis_server import free_port

CACHE = ROOT / ".cache" / "smtp-sink"
_COUNTER = re.compile(rb"mesg=(\d+)")


class Sink:
    kind = "?"
    host = "127.0.0.1"
    port: int

    def start(self) -> Sink:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def count(self) -> int:
        """Messages accepted since the sink started."""
        raise NotImplementedError

    def pids(self) -> list[int]:
        raise NotImplementedError

    def describe(self) -> str:
        return f"{self.kind} on {self.host}:{self.port}"


def find_smtp_sink(fetch: bool = True) -> tuple[str | None, str]:
    """(path, note): smtp-sink on PATH, else in the cache, else fetched into the cache when `fetch`."""
    on_path = shutil.which("smtp-sink")
    if on_path:
        return on_path, "smtp-sink from PATH"
    wrapper = CACHE / "smtp-sink"
    script = ROOT / "bench" / "get-smtp-sink.sh"
    if not fetch:
        if wrapper.exists():
            return str(wrapper), "smtp-sink from the cache"
        return None, "smtp-sink not cached (bench/get-smtp-sink.sh) and --no-fetch"
    try:
        done = subprocess.run(["sh", str(script), str(CACHE)], capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as error:
        return None, f"bench/get-smtp-sink.sh failed: {error}"
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return None, f"bench/get-smtp-sink.sh failed: {reason}"
    version = (CACHE / "VERSION").read_text().strip() if (CACHE / "VERSION").exists() else ""
    return done.stdout.strip().splitlines()[-1], f"smtp-sink from {version or 'the cache'}"


@dataclass
class CSink(Sink):
    binary: str
    log_dir: Path
    port: int = field(default_factory=free_port)
    kind = "postfix smtp-sink"
    process: subprocess.Popen[bytes] | None = None
    _offset: int = 0
    _last: int = 0

    def start(self) -> CSink:
        self._out = self.log_dir / f"smtp-sink-{self.port}.out"
        argv = [self.binary, "-c", "-4", "-m", "1024", "-t", "300"]
        if os.geteuid() == 0:  # smtp-sink refuses to run as root without dropping privileges
            argv += ["-u", "nobody"]
        argv += [f"127.0.0.1:{self.port}", "1024"]
        with self._out.open("wb") as out, (self.log_dir / f"smtp-sink-{self.port}.err").open("wb") as err:
            process = self.process = subprocess.Popen(argv, stdout=out, stderr=err, start_new_session=True)
        wait_until(lambda: port_open(self.port) or process.poll() is not None, 10, "smtp-sink to listen")
        if process.poll() is not None:
            err_text = (self.log_dir / f"smtp-sink-{self.port}.err").read_text(errors="replace").strip()
            raise RuntimeError(f"smtp-sink exited at start: {err_text}")
        return self

    def count(self) -> int:
        # smtp-sink -c appends "sess=.. quit=.. mesg=N" (CR or LF separated) on every accepted message.
        with self._out.open("rb") as out:
            out.seek(self._offset)
            chunk = out.read()
        if chunk:
            cut = max(chunk.rfind(b"\n"), chunk.rfind(b"\r"))
            if cut >= 0:
                found = _COUNTER.findall(chunk[:cut])
                if found:
                    self._last = int(found[-1])
                self._offset += cut + 1
        return self._last

    def pids(self) -> list[int]:
        return [self.process.pid] if self.process else []

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


@dataclass
class AioSink(Sink):
    """`processes` aiosmtpd servers on one port; arrival log lines per process."""

    log_dir: Path
    processes: int = 1
    name: str = "aiosmtpd"
    port: int = field(default_factory=free_port)
    kind = "aiosmtpd (Python)"
    children: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _offsets: dict[Path, int] = field(default_factory=dict)
    _counts: dict[Path, int] = field(default_factory=dict)

    def logs(self) -> list[Path]:
        return [self.log_dir / f"{self.name}-{self.port}-{i}.log" for i in range(self.processes)]

    def start(self) -> AioSink:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        for log in self.logs():
            log.write_bytes(b"")
            self.children.append(
                subprocess.Popen(
                    [sys.executable, "-m", "bench.sink", "--port", str(self.port), "--log", str(log)],
                    cwd=ROOT,
                    env=env,
                    start_new_session=True,
                )
            )
        wait_until(lambda: port_open(self.port), 15, "the aiosmtpd sink to listen")
        time.sleep(0.3 * self.processes)  # every process bound (SO_REUSEPORT) before connections come
        return self

    def count(self) -> int:
        for log in self.logs():
            with log.open("rb") as f:
                f.seek(self._offsets.get(log, 0))
                chunk = f.read()
            cut = chunk.rfind(b"\n") + 1
            self._offsets[log] = self._offsets.get(log, 0) + cut
            self._counts[log] = self._counts.get(log, 0) + chunk[:cut].count(b"\n")
        return sum(self._counts.values())

    def arrivals(self) -> dict[str, float]:
        """Recipient -> time.time() at which the sink accepted the message to it (the first one)."""
        seen: dict[str, float] = {}
        for log in self.logs():
            for line in log.read_text(errors="replace").splitlines():
                stamp, _, rcpt = line.partition("\t")
                with contextlib.suppress(ValueError):
                    seen.setdefault(rcpt, float(stamp))
        return seen

    def pids(self) -> list[int]:
        return [child.pid for child in self.children]

    def stop(self) -> None:
        for child in self.children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in self.children:
            try:
                child.wait(5)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(5)


# ---- the aiosmtpd sink process ---------------------------------------------------------------------------


class _Recorder:
    def __init__(self, log: Path) -> None:
        self._log = log.open("a", buffering=1)

    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        now = time.time()
        for rcpt in envelope.rcpt_tos:  # type: ignore[attr-defined]
            self._log.write(f"{now:.6f}\t{rcpt}\n")
        return "250 2.0.0 Ok: queued"


async def _serve(port: int, log: Path) -> None:
    from aiosmtpd.smtp import SMTP

    recorder = _Recorder(log)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(recorder, hostname="aiosmtpd-sink", enable_SMTPUTF8=True, data_size_limit=None),
        host="127.0.0.1",
        port=port,
        reuse_port=True,
        backlog=1024,
    )
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description="an aiosmtpd sink recording arrival times")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", type=Path, required=True)
    args = parser.parse_args()
    import logging

    logging.basicConfig(level=logging.ERROR)
    asyncio.run(_serve(args.port, args.log))


if __name__ == "__main__":
    main()
