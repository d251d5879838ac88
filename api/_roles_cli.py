"""``cinch agent`` and ``cinch api``: start a role, one line on stderr when it cannot."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio

from ._config import Config
from ._errors import CommandError


def run_agent(
    config: Config,
    say: Callable[[str], None],
    run: Callable[..., Any],
    one_line: Callable[[BaseExceptionGroup[Any]], str],
) -> int:
    from pool import InstanceLocked

    from ._roles import AgentService, serve_agent
    from ._service import SetupNeeded

    async def on_ready(service: AgentService) -> None:
        with trio.move_on_after(120):
            for name in service.scheduler.languages:
                await service.scheduler.pool(name).wait_ready()
        say(f"Cinch agent is up on {service.base_url} (instance {service.instance.id}).")

    error: CommandError | None = None
    try:
        run(lambda: serve_agent(config, on_ready=on_ready))
    except* (SetupNeeded, InstanceLocked) as group:
        error = CommandError(f"cannot start: {one_line(group)}")
    # Raised outside the except* block, so it is never wrapped in a group of its own.
    if error is not None:
        raise error
    return 0


def run_api(
    config: Config,
    say: Callable[[str], None],
    run: Callable[..., Any],
    one_line: Callable[[BaseExceptionGroup[Any]], str],
) -> int:
    from pool import InstanceLocked

    from ._roles import ApiService, serve_api
    from ._service import SetupNeeded
    from ._store import StoreError

    async def on_ready(service: ApiService) -> None:
        s = service.router.statistics()
        say(
            f"Cinch API is up on {service.base_url} (instance {service.instance.id}); "
            f"{s.agents_up} of {s.agents} agents up."
        )

    error: CommandError | None = None
    try:
        run(lambda: serve_api(config, on_ready=on_ready))
    except* (SetupNeeded, InstanceLocked, StoreError, ValueError) as group:
        error = CommandError(f"cannot start: {one_line(group)}")
    if error is not None:
        raise error
    return 0
