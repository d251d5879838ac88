"""Streamed runs over the fake backend: output as it comes, the cap, stopping a run."""

from __future__ import annotations

import signal

import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from scheduler import OutputCollector, RunRequest, Termination
from tests.scheduler.test_scheduler_fake import running


async def test_streamed_output_arrives_while_the_program_runs(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running() as s:
        seen: list[tuple[float, str, str]] = []
        t0 = trio.current_time()

        def on_output(stream: str, text: str) -> None:
            seen.append((trio.current_time() - t0, stream, text))

        result = await s.scheduler.run(
            RunRequest("python", "out:a\n;sleep:1;err:b\n;sleep:1;out:c\n"), on_output=on_output
        )
        assert [(round(t), st, tx) for t, st, tx in seen] == [
            (0, "stdout", "a\n"),
            (1, "stderr", "b\n"),
            (2, "stdout", "c\n"),
        ]
        assert (result.stdout, result.stderr) == ("a\nc\n", "b\n")
        assert s.sandbox(result.sandbox_id).streamed


async def test_one_shot_runs_are_not_streamed(autojump_clock: trio.testing.MockClock) -> None:
    async with running() as s:
        result = await s.run("out:x")
        assert not s.sandbox(result.sandbox_id).streamed


async def test_streamed_output_stops_at_the_cap_like_the_result(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running() as s:
        texts: list[str] = []
        result = await s.scheduler.run(
            RunRequest("python", "bytes:600;bytes:600", output_limit_bytes=1000),
            on_output=lambda stream, text: texts.append(text),
        )
        assert result.termination is Termination.OUTPUT_LIMIT
        assert result.truncated
        assert "".join(texts) == result.stdout == "x" * 1000


async def test_stop_ends_the_run_at_once_and_bills_up_to_then(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running() as s:
        stop = trio.Event()
        results = []

        async def run() -> None:
            results.append(
                await s.scheduler.run(
                    RunRequest("python", "out:started;sleep:100"),
                    on_output=lambda stream, text: None,
                    stop=stop,
                )
            )

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            await trio.sleep(0.5)
            stop.set()
        (result,) = results
        assert result.termination is Termination.CANCELLED
        assert result.exit_code == 137
        assert result.billable
        assert result.duration_ms == 500
        assert result.stdout == "started"
        assert s.sandbox(result.sandbox_id)._signals == [signal.SIGKILL]
        await trio.sleep(1)  # virtual: the teardown after the answer
        assert s.sandbox(result.sandbox_id).destroyed


async def test_started_means_the_run_has_its_sandbox(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running() as s, trio.open_nursery() as nursery:
        stop = trio.Event()
        await nursery.start(
            lambda task_status: s.scheduler.run(
                RunRequest("python", "sleep:100"), stop=stop, task_status=task_status
            )
        )
        assert s.scheduler.statistics().in_flight == 1
        stop.set()


_pieces = st.sampled_from(
    [
        b"a",
        b"\n",
        "é".encode(),
        "€".encode(),
        "😀".encode(),
        b"\x80",
        b"\xff",
        b"\xe0\x80",
        b"\xf0\x90",
        b"\xc2",
    ]
)


@given(
    chunks=st.lists(
        st.tuples(st.sampled_from(["stdout", "stderr"]), st.lists(_pieces, max_size=6)),
        max_size=12,
    ),
    limit=st.integers(0, 60),
)
def test_streamed_text_is_exactly_the_result_text(
    chunks: list[tuple[str, list[bytes]]], limit: int
) -> None:
    """Chunked anyhow, cut anywhere, invalid bytes included: the pieces handed
    over never split a character and add up to exactly what the result holds."""
    got: dict[str, list[str]] = {"stdout": [], "stderr": []}
    collector = OutputCollector(limit, lambda stream, text: got[stream].append(text))
    for stream, parts in chunks:
        if not collector.add(stream, b"".join(parts)):
            break
    collector.finish()
    stdout, stderr = collector.decode()
    assert "".join(got["stdout"]) == stdout
    assert "".join(got["stderr"]) == stderr
