"""Processes the benchmark owns: its Redis, worker processes, and their memory (RSS from /proc).

Nothing here touches a Redis or a worker it did not start: the bench's redis-server listens on a free port
of its own, without persistence, and is shut down at the end.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(os.environ.get("VIRTUAL_ENV", ROOT / ".venv")) / "bin"


def log(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def wait_until(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


# ---- Redis -----------------------------------------------------------------------------------------------


class BenchRedis(RedisServer):
    """The bench's own redis-server (`--save "" --appendonly no`, a free port); its directory goes with it."""

    def stop(self) -> None:
        super().stop()
        shutil.rmtree(self.directory, ignore_errors=True)


# ---- worker processes ------------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped) counts as gone.
    with contextlib.suppress(OSError):
        return " Z " not in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1][:4]
    return False


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants (from /proc/*/stat parent links)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, ()))
    return tree


def _status_kib(pid: int, name: str) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
    return 0


def _pss_kib(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


@dataclass(frozen=True)
class Memory:
    """Memory of a process tree: RSS summed (shared pages counted in every process), PSS (shared split)."""

    rss_kib: int
    pss_kib: int
    processes: int
    per_process: tuple[tuple[int, str, int], ...] = ()  # (pid, name, RSS KiB)

    @property
    def rss_mib(self) -> float:
        return round(self.rss_kib / 1024, 1)

    @property
    def pss_mib(self) -> float:
        return round(self.pss_kib / 1024, 1)


def _name(pid: int) -> str:
    """A short label: the Celery node (-n) or the program."""
    with contextlib.suppress(OSError):
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        words = [w.decode(errors="replace") for w in argv if w]
        if "-n" in words and words.index("-n") + 1 < len(words):
            return words[words.index("-n") + 1].split("@")[0]
        return " ".join(Path(w).name for w in words[:3])
    return "?"


def tree_memory(pid: int) -> Memory:
    pids = [p for p in process_tree(pid) if _alive(p)]
    rss = {p: _status_kib(p, "VmRSS") for p in pids}
    return Memory(
        sum(rss.values()),
        sum(_pss_kib(p) for p in pids),
        len(pids),
        tuple((p, _name(p), rss[p]) for p in pids),
    )


@dataclass
class Workers:
    """A worker command (its own process group) started with the bench's environment; SIGTERM to stop."""

    argv: Sequence[str]
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> Workers:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            list(self.argv),
            env=self.env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def memory(self) -> Memory:
        return tree_memory(self.pid)

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM (warm shutdown: running tasks finish), then SIGKILL to the group after `timeout`."""
        if self.process is None or self.process.poll() is not None:
            return
        tree = process_tree(self.pid)
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            self.process.wait(10)
        # Pool children of a killed parent: only the ones this tree had, by pid.
        for pid in tree:
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


def ping_workers(app: object, expected: int, timeout: float) -> list[str]:
    """Wait until `expected` Celery workers answer a broadcast ping; their node names."""
    names: list[str] = []

    def answered() -> bool:
        nonlocal names
        replies = app.control.ping(timeout=0.5) or []  # type: ignore[attr-defined]
        names = sorted(name for reply in replies for name in reply)
        return len(names) >= expected

    wait_until(answered, timeout, f"{expected} Celery worker(s) to answer a ping", interval=0.2)
    return names


# The processes this run started (for the CPU split between the bench and the rest of the machine): each
# entry is asked for its pids when the CPU is sampled, since worker pools fork and end during the run.
OWN: list[Callable[[], list[int]]] = [lambda: [os.getpid()]]


def own_pids() -> list[int]:
    pids: set[int] = set()
    for source in OWN:
        with contextlib.suppress(Exception):
            pids.update(source())
    return sorted(pids)


def own_tree(workers: Workers) -> Callable[[], list[int]]:
    return lambda: process_tree(workers.pid) if workers.running() else []


# ---- machine ---------------------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu_model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_before": list(os.getloadavg()),
    }


def _cpu_jiffies() -> dict[str, int]:
    """Jiffies of all CPUs since boot: process time (user, nice, system), interrupts, steal, and in all."""
    f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = f + [0] * (8 - len(f))
    return {
        "process": user + nice + system,
        "irq": irq + softirq,  # loopback TCP is largely softirq time: not charged to any process
        "steal": steal,  # a virtual machine's CPU taken by the host
        "total": user + nice + system + idle + iowait + irq + softirq + steal,
    }


def _process_jiffies(pids: Sequence[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            # utime + stime, and cutime + cstime: children it waited for (forked senders) are ours too
            total += sum(int(x) for x in fields[11:15])
    return total


class LoadMeter:
    """CPU use over an interval, as shares of all cores: busy, the bench's own processes, the others.

    `cpu_others` (process time not charged to a process of the bench) is what other programs on the
    machine took while the figures were measured; a process of ours that ended inside the interval counts
    as "other", so the split is an estimate. Interrupt time (`cpu_irq`, much of it loopback TCP) and a
    virtual machine's steal time are reported apart.
    """

    def __init__(self, our_pids: Callable[[], Sequence[int]]) -> None:
        self._our_pids = our_pids
        self._start: tuple[dict[str, int], int] | None = None

    def start(self) -> LoadMeter:
        self._start = (_cpu_jiffies(), _process_jiffies(self._our_pids()))
        return self

    def stop(self) -> dict[str, float]:
        assert self._start is not None
        before, ours_before = self._start
        now, ours = _cpu_jiffies(), _process_jiffies(self._our_pids())
        span = max(1, now["total"] - before["total"])  # jiffies of all CPUs together

        def share(key: str) -> float:
            return (now[key] - before[key]) / span

        process = share("process")
        bench = min(process, max(0, ours - ours_before) / span)
        return {
            "cpu_busy": round(process + share("irq"), 3),
            "cpu_bench": round(bench, 3),
            "cpu_others": round(max(0.0, process - bench), 3),
            "cpu_irq": round(share("irq"), 3),
            "cpu_steal": round(share("steal"), 3),
        }
