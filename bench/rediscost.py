"""Redis commands per delivered message: `INFO commandstats` around a phase, and where they go by key.

`command_calls` reads the calls per command; `cost` turns two readings and a message count into the figure
(commands per message, in all and per command). `KeySample` runs MONITOR over a small batch to say which
keys (with ids blanked to `*`) take the commands: the code path behind each. MONITOR slows Redis, so it is
never running while the figure itself is measured.
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from typing import Any

import redis

# Commands of the measurement itself (and of a bench reading progress), not of the service.
OURS = frozenset({"info", "monitor", "ping", "client|setname", "client|setinfo", "hello"})
_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{16,}|\d+")


def command_calls(client: redis.Redis) -> dict[str, int]:
    """Calls per command since the server started (lowercase names, subcommands as `client|setname`)."""
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def cost(
    before: dict[str, int], after: dict[str, int], messages: int, seconds: float, idle_per_s: float = 0.0
) -> dict[str, Any]:
    """Commands per message between two readings; `idle_per_s`: what the service issues with nothing to
    do (heartbeats, BRPOP timeouts), for the figure with that background taken out."""
    diff = {k: after.get(k, 0) - before.get(k, 0) for k in after if k not in OURS}
    diff = {k: v for k, v in diff.items() if v > 0}
    total = sum(diff.values())
    per = max(1, messages)
    background = idle_per_s * seconds
    return {
        "messages": messages,
        "seconds": round(seconds, 3),
        "commands": total,
        "per_message": round(total / per, 2),
        "idle_commands_per_s": round(idle_per_s, 1),
        "per_message_without_idle": round(max(0.0, total - background) / per, 2),
        "by_command": {k: round(v / per, 2) for k, v in sorted(diff.items(), key=lambda kv: -kv[1])},
    }


def shape(command: str) -> str:
    """`HSET mwbench:ledger:<uuid> ...` -> `HSET mwbench:ledger:*`; EVALSHA shows its first key."""
    words = command.split()
    if not words:
        return ""
    name = words[0].upper()
    if name in ("EVALSHA", "EVAL") and len(words) > 3 and words[2] != "0":
        return f"{name} {words[1][:8]} {_ID.sub('*', words[3])}"
    return name if len(words) < 2 else f"{name} {_ID.sub('*', words[1])}"


class KeySample(threading.Thread):
    """MONITOR in a thread: counts of (command, key shape) until `stop`."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self._client = redis.Redis.from_url(url, socket_timeout=0.5)
        self._stopping = threading.Event()
        self._ready = threading.Event()
        self.counts: Counter[str] = Counter()

    def run(self) -> None:
        with self._client.monitor() as monitor:
            self._ready.set()
            while not self._stopping.is_set():
                try:
                    entry = monitor.next_command()
                except (redis.TimeoutError, TimeoutError):
                    continue
                except redis.ConnectionError:
                    return
                key = shape(entry.get("command", ""))
                if key.split(" ")[0].lower() not in OURS:
                    self.counts[key] += 1

    def start(self) -> None:
        super().start()
        self._ready.wait(5)

    def stop(self) -> None:
        self._stopping.set()
        self.join(5)

    def per_message(self, messages: int, top: int = 40) -> list[tuple[str, float]]:
        return [(key, round(n / max(1, messages), 2)) for key, n in self.counts.most_common(top)]
