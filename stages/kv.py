"""A small key-value store as stages, spoken to over RESP (the Redis protocol).

Used by graphs/kv.yaml: `parse` checks commands and answers the cheap ones; `store` (one
worker: it owns the data) runs GET/SET/DEL/INCR. Poke it with
`redis-cli -p 6380 set greeting hello` then `redis-cli -p 6380 get greeting`.
"""

from __future__ import annotations

from typing import Any

ARITY = {"GET": 2, "SET": 3, "DEL": -2, "INCR": 2, "EXISTS": -2}


def parse(command: list[Any], ctx: Any) -> None:
    if not command:
        ctx.reply({"error": "empty command"})
        return
    name = str(command[0]).upper()
    if name == "PING":
        ctx.reply({"ok": "PONG"} if len(command) == 1 else command[1])
    elif name in ("COMMAND", "CONFIG", "CLIENT", "HELLO"):
        ctx.reply([])  # what redis-cli and redis-benchmark ask on connect
    elif name not in ARITY:
        ctx.reply({"error": f"unknown command '{command[0]}'"})
    elif (ARITY[name] > 0 and len(command) != ARITY[name]) or len(command) < -ARITY[name]:
        ctx.reply({"error": f"wrong number of arguments for '{name.lower()}' command"})
    else:
        ctx.emit("store", [name, *command[1:]])


class Store:
    """The data, held by one worker process."""

    def setup(self, ctx: Any) -> None:
        self.data: dict[Any, Any] = {}

    def handle(self, command: list[Any], ctx: Any) -> Any:
        name, args = command[0], command[1:]
        if name == "GET":
            return self.data.get(args[0])
        if name == "SET":
            self.data[args[0]] = args[1]
            return {"ok": "OK"}
        if name in ("DEL", "EXISTS"):
            found = sum(1 for key in args if key in self.data)
            if name == "DEL":
                for key in args:
                    self.data.pop(key, None)
            return found
        value = self.data.get(args[0], "0")  # INCR
        try:
            number = int(value) + 1
        except (TypeError, ValueError):
            return {"error": "value is not an integer or out of range"}
        self.data[args[0]] = str(number)
        return number
