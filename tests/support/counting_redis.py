"""A Redis client that counts what it sends: round trips (a command, or a pipeline's execute) and commands
(a pipeline's execute counts each command in it)."""

from __future__ import annotations

from typing import Any

import redis


class CountingRedis(redis.Redis):
    round_trips = 0
    commands = 0

    def execute_command(self, *args: Any, **options: Any) -> Any:
        self.round_trips += 1
        self.commands += 1
        return super().execute_command(*args, **options)

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
        pipe = super().pipeline(transaction, shard_hint)
        execute = pipe.execute

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.round_trips += 1
            self.commands += len(pipe.command_stack)
            return execute(*args, **kwargs)

        pipe.execute = counted  # type: ignore[method-assign]
        return pipe
