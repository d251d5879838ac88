"""pangolin's Sandbox.stream() and AsyncSandbox.stream() against a scripted server."""

from __future__ import annotations

import asyncio
import time

import pytest
from pangolin import (
    AsyncSandbox,
    CinchError,
    InsufficientCreditsError,
    OutputChunk,
    Sandbox,
    SandboxResult,
)
from pangolin._http import EventReader
from sdk_fake_api import Reply, ScriptedServer, success_body

KEY = "cinch_live_0123456789abcdef"


def box(server: ScriptedServer) -> Sandbox:
    return Sandbox(api_key=KEY, base_url=server.base_url)


def test_stream_yields_chunks_as_they_come_then_the_result(server: ScriptedServer) -> None:
    server.script(
        Reply(
            events=[
                ("stdout", {"text": "a\n"}),
                ("stderr", {"text": "é\u2028"}),
                ("result", success_body(stdout="a\n", stderr="é\u2028")),
            ],
            headers={"X-Request-Id": "req-1"},
            gap=0.2,
        )
    )
    t0 = time.monotonic()
    seen = []
    for event in box(server).stream("print(1)"):
        seen.append((time.monotonic() - t0, event))
    assert [e for _, e in seen[:2]] == [OutputChunk("stdout", "a\n"), OutputChunk("stderr", "é\u2028")]
    assert seen[0][0] < 0.15  # the first chunk did not wait for the rest
    result = seen[-1][1]
    assert isinstance(result, SandboxResult)
    assert result.stdout == "a\n"
    assert result.request_id == "req-1"
    assert result.credits_remaining is None
    assert server.requests[0].headers["Accept"] == "text/event-stream"


def test_stream_raises_an_error_event(server: ScriptedServer) -> None:
    server.script(Reply(events=[("stdout", {"text": "x"}), ("error", {"error": "boom"})]))
    events = box(server).stream("x")
    assert next(events) == OutputChunk("stdout", "x")
    with pytest.raises(CinchError, match="boom"):
        next(events)


def test_stream_retries_a_503_before_the_start_with_the_same_key(server: ScriptedServer) -> None:
    server.script(
        Reply(503, {"error": "busy"}, {"Retry-After": "0"}),
        Reply(events=[("result", success_body())]),
    )
    (result,) = list(box(server).stream("x"))
    assert isinstance(result, SandboxResult)
    keys = {r.headers["Idempotency-Key"] for r in server.requests}
    assert len(server.requests) == 2
    assert len(keys) == 1


def test_stream_raises_errors_before_the_start(server: ScriptedServer) -> None:
    server.script(Reply(402, {"error": "out of credits"}))
    with pytest.raises(InsufficientCreditsError):
        list(box(server).stream("x"))


def test_a_server_that_does_not_stream_gives_one_result(server: ScriptedServer) -> None:
    server.script(Reply(200, success_body()))
    (result,) = list(box(server).stream("x"))
    assert isinstance(result, SandboxResult)
    assert result.stdout == "4\n"


def test_leaving_the_loop_early_hangs_up(server: ScriptedServer) -> None:
    server.script(Reply(events=[("stdout", {"text": f"{i}\n"}) for i in range(100)], gap=0.01))
    for event in box(server).stream("x"):
        assert event == OutputChunk("stdout", "0\n")
        break
    time.sleep(0.5)
    assert server.hung_up


def test_async_stream(server: ScriptedServer) -> None:
    server.script(Reply(events=[("stdout", {"text": "a"}), ("result", success_body(stdout="a"))]))

    async def main() -> list[object]:
        async with AsyncSandbox(api_key=KEY, base_url=server.base_url) as sandbox:
            return [event async for event in sandbox.stream("x")]

    seen = asyncio.run(main())
    assert seen[0] == OutputChunk("stdout", "a")
    assert isinstance(seen[1], SandboxResult)
    assert seen[1].stdout == "a"


def test_event_reader_splits_only_at_cr_and_lf() -> None:
    reader = EventReader()
    body = b'event: stdout\r\ndata: {"text": "\xe2\x80\xa8"}\r\n\r\nevent: result\ndata: {}\n\n'
    events = [e for i in range(len(body)) for e in reader.feed(body[i : i + 1])]
    assert events == [("stdout", '{"text": "\u2028"}'), ("result", "{}")]
