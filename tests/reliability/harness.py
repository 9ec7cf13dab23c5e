"""What the fault scenarios run on: a private Redis, real worker processes, a producer, and the figures.

    with Cluster.start(tmp_path, appendonly=True) as cluster:
        cluster.save_realm("acme", sink.settings_dict())
        worker = cluster.worker(concurrency=4, MAILWORKER_MAX_ATTEMPTS="10")   # `mailworker worker` process
        ids = cluster.send_many("acme", "password-reset", addresses)
        results = cluster.wait_results(ids, timeout=120)

Each cluster has its own redis-server (its own port, optionally AOF), so a scenario never shares a queue with
the test session's in-thread worker or with another engineer's tests, and can count every key it left.
Workers are started as `mailworker worker --queues transactional,control` subprocesses in their own
process group (so SIGKILL takes the pool's children too), with MAILWORKER_* pointing at the cluster.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from bench.figures import percentile as nearest_rank
from config.settings import ServiceSettings
from tests.support.redis_server import RedisServer
from tests.support.smtp_server import session_ca
from worker.jobs.lanes import lane_for
from worker.jobs.model import EmailJob, new_job
from worker.runtime import Runtime

ROOT = Path(__file__).resolve().parents[2]
MAILWORKER = Path(sys.executable).with_name("mailworker")
FINAL = {"sent", "dead-lettered", "dropped", "duplicate-skipped"}


def ended_result(meta: dict[str, Any]) -> dict[str, Any] | None:
    """A job's result dict from its raw result-backend entry: SUCCESS returns it, FAILURE carries it in
    DeadLettered's arguments (tasks/outcomes.py); None for anything else (RETRY, a real failure)."""
    value = meta.get("result")
    if meta.get("status") == "SUCCESS" and isinstance(value, dict):
        return value
    if (
        meta.get("status") == "FAILURE"
        and isinstance(value, dict)
        and value.get("exc_type") == "DeadLettered"
    ):
        carried = (value.get("exc_message") or [None])[0]
        return carried if isinstance(carried, dict) else None
    return None


USER = {"username": "alice", "first_name": "Alice", "last_name": "Liddell", "email": "alice@example.com"}
CONTEXT = {
    "user": USER,
    "realm_name": "ACME",
    "link": "https://iam.example.com/reset?k=1",
    "link_expiration": 60,
}


# Faster retries for the scenarios that are about something else than the retry schedule. Scenarios that
# prove behaviour "at default settings" start their cluster with defaults=True and get none of these.
TUNED = {
    "MAILWORKER_RESULT_EXPIRES": "3600",
    "MAILWORKER_RETRY_BASE_DELAY": "0.2",
    "MAILWORKER_RETRY_MAX_DELAY": "2",
    "MAILWORKER_MAX_ATTEMPTS": "8",
    "MAILWORKER_RECIPIENT_COOLDOWN": "0",
}


def worker_env(url: str, prefix: str, *, defaults: bool = False, **overrides: str) -> dict[str, str]:
    """The environment of a worker process (and of CLI subprocesses) for a cluster.

    Only where to find Redis, the cluster's own key prefix, the secret key and the test CA are set; the
    TUNED retry settings too unless `defaults`.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILWORKER_")}
    env.update(
        {
            "MAILWORKER_STORE_URL": url,
            "MAILWORKER_BROKER_URL": url,
            "MAILWORKER_RESULT_BACKEND": url,
            "MAILWORKER_KEY_PREFIX": prefix,
            "MAILWORKER_BROKER_KEY_PREFIX": f"{prefix}:",
            "MAILWORKER_SECRET_KEY": os.environ["MAILWORKER_SECRET_KEY"],
            "MAILWORKER_SMTP_CA_FILE": session_ca().ca_file,
            "MAILWORKER_LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
        }
    )
    if not defaults:
        env.update(TUNED)
    env.update(overrides)
    return env


@dataclass
class WorkerProcess:
    """One `mailworker worker` process (and its prefork children, in the same process group)."""

    argv: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    ready_lines: int = 1  # `mailworker worker` without --queues starts three Celery workers

    def start(self, ready_timeout: float = 60.0) -> WorkerProcess:
        self._log = self.log_path.open("ab")
        self._offset = self.log_path.stat().st_size
        self.proc = subprocess.Popen(self.argv, env=self.env, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + ready_timeout
        while self.log()[self._offset :].count(" ready.") < self.ready_lines:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker not ready within {ready_timeout}s:\n{self.log()[-3000:]}")
            time.sleep(0.1)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL to the whole process group: a crashed machine, no goodbye, nothing acknowledged."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def terminate(self, timeout: float = 60.0) -> float:
        """SIGTERM (Celery's warm shutdown); returns how long the worker took to exit."""
        assert self.proc is not None
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"worker did not stop within {timeout}s of SIGTERM") from None
        return time.monotonic() - started

    def stop(self) -> None:
        if self.alive:
            with contextlib.suppress(AssertionError):
                self.terminate(timeout=20)
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):  # stray pool children of a killed parent
                os.killpg(self.proc.pid, signal.SIGKILL)
        if getattr(self, "_log", None):
            self._log.close()


@dataclass
class Cluster:
    server: RedisServer
    prefix: str
    tmp: Path
    overrides: dict[str, str] = field(default_factory=dict)
    workers: list[WorkerProcess] = field(default_factory=list)
    defaults: bool = False  # every setting at its default (TUNED retries not applied)

    @classmethod
    @contextlib.contextmanager
    def start(cls, tmp: Path, *, appendonly: bool = False, defaults: bool = False,
              **overrides: str) -> Iterator[Cluster]:  # fmt: skip
        server = RedisServer(appendonly=appendonly).start()
        cluster = cls(server, f"mwrel-{uuid.uuid4().hex[:8]}", tmp, dict(overrides), defaults=defaults)
        try:
            yield cluster
        finally:
            for worker in cluster.workers:
                worker.stop()
            cluster.close()
            server.stop()

    # -- the producer side (this process) --

    @property
    def url(self) -> str:
        return self.server.url

    def env(self, **overrides: str) -> dict[str, str]:
        return worker_env(self.url, self.prefix, defaults=self.defaults, **{**self.overrides, **overrides})

    @property
    def runtime(self) -> Runtime:
        found: Runtime | None = self.__dict__.get("_runtime")
        if found is None:
            env = self.env()
            values = {
                k.removeprefix("MAILWORKER_").lower(): v
                for k, v in env.items()
                if k.startswith("MAILWORKER_")
            }
            found = self.__dict__["_runtime"] = Runtime(ServiceSettings(**values))
        return found

    @property
    def app(self) -> Any:
        found = self.__dict__.get("_app")
        if found is None:
            from worker.app import create_app

            found = self.__dict__["_app"] = create_app(self.runtime.settings)
        return found

    @property
    def redis(self) -> redis.Redis:
        return self.runtime.redis

    def stats(self, realm: str) -> dict[str, int]:
        """The realm's counts of the last hour, once the workers wrote what they summed."""
        self.counted()
        return self.runtime.services.stats.last_hour(realm)

    def counted(self, timeout: float = 15.0) -> None:
        """Wait until the workers wrote the counts they sum (worker/outcomes/buffer.py: every
        `MAILWORKER_COUNTER_FLUSH_INTERVAL`): until the counters stay the same for one interval and a half."""
        # The workers' interval: their environment's, else the default (this process's settings read the
        # test session's environment too, where counters are written at once).
        default = ServiceSettings.model_fields["counter_flush_interval"].default
        interval = float(self.env().get("MAILWORKER_COUNTER_FLUSH_INTERVAL", default))
        pause = interval * 1.5 + 0.2
        deadline = time.monotonic() + timeout
        before = self.redis.hgetall(self.runtime.keys.outcome_totals())
        while time.monotonic() < deadline:
            time.sleep(pause)
            now = self.redis.hgetall(self.runtime.keys.outcome_totals())
            if now == before:
                return
            before = now

    def close(self) -> None:
        if "_app" in self.__dict__:
            self.app.close()
        if "_runtime" in self.__dict__:
            self.runtime.close()

    def save_realm(self, realm: str, settings: dict[str, Any]) -> None:
        self.runtime.store.save(realm, settings)

    def job(self, realm: str, template: str, to: str, **kwargs: Any) -> EmailJob:
        kwargs.setdefault("context", CONTEXT)
        return new_job(realm, template, to, **kwargs)

    def enqueue(self, job: EmailJob) -> str:
        """What tasks.api.send_email does after validation: published in its lane, then recorded as pending."""
        args = [job.model_dump(mode="json")]
        lane = lane_for(job.expires_at, time.time())
        self.app.send_task("mail.send", args=args, task_id=job.id, queue="transactional", priority=lane)
        self.runtime.pending.track(job.id, "mail.send", args, "transactional", lane)
        return job.id

    def send_many(self, realm: str, template: str, addresses: Iterable[str], **kwargs: Any) -> list[str]:
        with self.app.producer_or_acquire() as producer:
            ids = []
            for to in addresses:
                job = self.job(realm, template, to, **kwargs)
                args = [job.model_dump(mode="json")]
                lane = lane_for(job.expires_at, time.time())
                self.app.send_task("mail.send", args=args, task_id=job.id, queue="transactional",
                                   producer=producer, priority=lane)  # fmt: skip
                self.runtime.pending.track(job.id, "mail.send", args, "transactional", lane)
                ids.append(job.id)
        return ids

    def python(self, code: str, *args: str, timeout: float = 120) -> str:
        """Run `code` in a producer subprocess with the cluster's environment (tasks.api and all); stdout."""
        done = subprocess.run([sys.executable, "-c", code, *args], env=self.env(), cwd=ROOT,
                              capture_output=True, text=True, timeout=timeout)  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    def results(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        """The final results among `ids` (sent, dead-lettered, dropped, skipped); retries are not final."""
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(ids), 2000):
            batch = ids[start : start + 2000]
            for job_id, raw in zip(
                batch, self.redis.mget([f"celery-task-meta-{i}" for i in batch]), strict=True
            ):
                if raw is None:
                    continue
                value = ended_result(json.loads(raw))
                if value is not None and value.get("status") in FINAL:
                    found[job_id] = value
        return found

    def wait_results(self, ids: list[str], timeout: float, poll: float = 0.5) -> dict[str, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        done: dict[str, dict[str, Any]] = {}
        while True:
            missing = [i for i in ids if i not in done]
            done.update(self.results(missing))
            if len(done) == len(ids) or time.monotonic() > deadline:
                return done
            time.sleep(poll)

    # -- worker processes --

    def worker(self, *, concurrency: int = 2, queues: str | None = "transactional,control",
               name: str | None = None, loglevel: str = "INFO", **env: str) -> WorkerProcess:  # fmt: skip
        """A `mailworker worker` process group; queues=None: the default command (every worker group)."""
        name = name or f"w{len(self.workers) + 1}"
        argv = [str(MAILWORKER), "worker", "--concurrency", str(concurrency), "--loglevel", loglevel]
        if queues is not None:
            argv += ["--queues", queues, "--name", f"{name}-{self.prefix}@%h"]
        worker = WorkerProcess(argv, self.env(MAILWORKER_LOG_LEVEL=loglevel, **env), self.tmp / f"{name}.log",
                               ready_lines=1 if queues is not None else 3)  # fmt: skip
        self.workers.append(worker)
        return worker.start()

    def lane_keys(self, queue: str = "transactional") -> list[str]:
        """The lists of every priority lane of `queue` (kombu: "<queue>" and "<queue>\x06\x16<n>")."""
        return [f"{self.prefix}:{queue}"] + [f"{self.prefix}:{queue}\x06\x16{n}" for n in (3, 6, 9)]

    def queue_length(self, queue: str = "transactional") -> int:
        return sum(int(self.redis.llen(name)) for name in self.lane_keys(queue))

    def queued_messages(self, queue: str = "transactional") -> list[str]:
        return [str(m) for name in self.lane_keys(queue) for m in self.redis.lrange(name, 0, -1)]

    def held_jobs(self) -> set[str]:
        """Task ids of the jobs workers hold: taken and recorded (kombu's unacked hash), or running (their
        claim: worker/broker/transport.py records a transactional job only at the next heartbeat)."""
        held = set()
        for raw in self.redis.hvals(f"{self.prefix}:unacked"):
            payload = json.loads(raw)[0]
            held.add(str(payload["headers"]["id"]))
        claims = f"{self.prefix}:claim:"
        held |= {str(key)[len(claims) :] for key in self.redis.scan_iter(match=f"{claims}*", count=1000)}
        return held

    def key_count(self) -> int:
        return int(self.redis.dbsize())


# ---- figures ---------------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """bench.figures.percentile (nearest rank), one definition for the bench's and the scenarios' figures.

    NaN rather than None for no samples: the scenarios compute ratios and comparisons with it, and NaN
    makes those fail their assertion instead of raising a TypeError before the assertion that says why.
    """
    value = nearest_rank(values, q)
    return float("nan") if value is None else value


def latencies(results: dict[str, dict[str, Any]], jobs: dict[str, EmailJob]) -> list[float]:
    """Seconds from the job's creation to the server's acceptance, for the sent ones."""
    return [r["sent_at"] - jobs[i].created_at for i, r in results.items() if r["status"] == "sent"]


def outcome_counts(results: dict[str, dict[str, Any]]) -> Counter[str]:
    return Counter(r["status"] for r in results.values())


def attempts_histogram(results: dict[str, dict[str, Any]]) -> dict[int, int]:
    return dict(sorted(Counter(int(r.get("attempts") or 0) for r in results.values()).items()))


def report(scenario: str, **figures: Any) -> dict[str, Any]:
    """Print one line of figures (make reliability runs with -s) and keep them for docs/reliability.md."""
    line = " ".join(f"{k}={_fmt(v)}" for k, v in figures.items())
    print(f"\nFIGURES {scenario}: {line}", flush=True)
    out = ROOT / ".pytest_cache" / "reliability-figures.jsonl"
    out.parent.mkdir(exist_ok=True)
    with out.open("a") as handle:
        handle.write(json.dumps({"scenario": scenario, "at": time.strftime("%Y-%m-%d %H:%M:%S"), **figures},
                                default=str) + "\n")  # fmt: skip
    return figures


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {"p50_s": percentile(values, 50), "p99_s": percentile(values, 99), "max_s": max(values),
            "mean_s": statistics.fmean(values)}  # fmt: skip
