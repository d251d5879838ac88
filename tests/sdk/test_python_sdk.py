"""Unit tests of the Python SDK (``pangolin``) against a scripted local server."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pangolin
import pytest
import trio
from pangolin import (
    AsyncSandbox,
    AuthenticationError,
    BadRequestError,
    CinchError,
    ConflictError,
    InsufficientCreditsError,
    NetworkError,
    RateLimitError,
    RequestTimeoutError,
    Sandbox,
    SandboxResult,
    ServiceUnavailableError,
    _retry,
)
from sdk_fake_api import Reply, ScriptedServer, success_body

KEY = "cinch_live_0123456789abcdef"


@pytest.fixture
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Makes retries immediate and records the delays the SDK asked for."""
    delays: list[float] = []

    def fake_delay(attempt: int, error: CinchError) -> float:
        delays.append(_retry.retry_delay(attempt, error, rand=lambda: 0.0))
        return 0.0

    monkeypatch.setattr("pangolin.client.retry_delay", fake_delay)
    monkeypatch.setattr("pangolin.async_client.retry_delay", fake_delay)
    return delays


def make_box(server: ScriptedServer, **kwargs: object) -> Sandbox:
    return Sandbox(api_key=KEY, base_url=server.base_url, **kwargs)  # type: ignore[arg-type]


# --- success mapping -------------------------------------------------------


def test_success_maps_every_field(server: ScriptedServer) -> None:
    server.script(
        Reply(
            200,
            success_body(stdout="hi\n", stderr="warn\n", durationMs=17, queueMs=5),
            {"X-Request-Id": "req_1", "X-Credits-Remaining": "9950"},
        )
    )

    result = make_box(server).run("print('hi')", stdin="input\n")

    assert result == SandboxResult(
        stdout="hi\n",
        stderr="warn\n",
        exit_code=0,
        timed_out=False,
        duration_ms=17,
        termination="exited",
        signal=None,
        truncated=False,
        queue_ms=5,
        credits_charged=1,
        credits_remaining=9950,
        request_id="req_1",
    )
    assert result.ok


def test_request_shape(server: ScriptedServer) -> None:
    server.script(Reply(200, success_body()))

    make_box(server).run("console.log(1)", language="javascript", stdin="x")

    (request,) = server.requests
    assert request.method == "POST"
    assert request.path == "/run"
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["User-Agent"].startswith("pangolin-sdk/0.4.0 ")
    assert uuid.UUID(request.headers["Idempotency-Key"]).version == 4
    assert request.body == {"code": "console.log(1)", "language": "javascript", "stdin": "x"}


def test_stdin_is_omitted_when_not_given(server: ScriptedServer) -> None:
    server.script(Reply(200, success_body()))
    make_box(server).run("print(1)")
    assert server.requests[0].body == {"code": "print(1)", "language": "python"}


def test_each_run_gets_a_fresh_idempotency_key(server: ScriptedServer) -> None:
    server.script(Reply(200, success_body()), Reply(200, success_body()))
    box = make_box(server)
    box.run("print(1)")
    box.run("print(1)")
    first, second = (r.headers["Idempotency-Key"] for r in server.requests)
    assert first != second


def test_caller_chosen_idempotency_key_is_sent(server: ScriptedServer) -> None:
    server.script(Reply(200, success_body()))
    make_box(server).run("print(1)", idempotency_key="order-42")
    assert server.requests[0].headers["Idempotency-Key"] == "order-42"


def test_nonzero_exit_is_a_result_not_an_exception(server: ScriptedServer) -> None:
    server.script(
        Reply(
            200,
            success_body(
                stdout="",
                stderr="boom\n",
                exitCode=137,
                termination="signal",
                signal="SIGKILL",
                truncated=True,
            ),
        )
    )

    result = make_box(server).run("import os; os.abort()")

    assert (result.exit_code, result.termination, result.signal) == (137, "signal", "SIGKILL")
    assert result.truncated
    assert not result.ok


def test_missing_optional_fields_default(server: ScriptedServer) -> None:
    server.script(
        Reply(
            200,
            {"stdout": "", "stderr": "", "exitCode": None, "timedOut": True, "durationMs": 5000},
        )
    )

    result = make_box(server).run("while True: pass")

    assert result.exit_code is None
    assert result.timed_out
    assert not result.ok
    assert (result.termination, result.queue_ms, result.credits_charged) == (None, None, None)
    assert (result.credits_remaining, result.request_id, result.truncated) == (None, None, False)


def test_malformed_success_body_raises(server: ScriptedServer) -> None:
    server.script(Reply(200, "not json"))
    with pytest.raises(CinchError, match="invalid response") as info:
        make_box(server).run("print(1)")
    assert info.value.status == 200


# --- errors ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error_class"),
    [
        (400, BadRequestError),
        (401, AuthenticationError),
        (402, InsufficientCreditsError),
        (404, CinchError),
        (405, CinchError),
        (409, ConflictError),
        (413, BadRequestError),
        (500, CinchError),
    ],
)
def test_error_statuses_map_to_classes_and_are_not_retried(
    server: ScriptedServer, status: int, error_class: type
) -> None:
    server.script(Reply(status, {"error": f"nope {status}"}, {"X-Request-Id": "req_e"}))

    with pytest.raises(CinchError) as info:
        make_box(server).run("print(1)")

    assert type(info.value) is error_class
    assert (str(info.value), info.value.status, info.value.request_id) == (
        f"nope {status}",
        status,
        "req_e",
    )
    assert len(server.requests) == 1


def test_conflict_is_a_bad_request() -> None:
    assert issubclass(ConflictError, BadRequestError)


def test_error_without_json_body_uses_reason_phrase(server: ScriptedServer) -> None:
    server.script(Reply(500, "<html>oops</html>"))
    with pytest.raises(CinchError, match=r"^Internal Server Error$"):
        make_box(server).run("print(1)")


@pytest.mark.parametrize(
    ("status", "error_class"), [(429, RateLimitError), (503, ServiceUnavailableError)]
)
def test_throttling_errors_carry_retry_after(
    server: ScriptedServer,
    status: int,
    error_class: type[RateLimitError] | type[ServiceUnavailableError],
) -> None:
    server.script(Reply(status, {"error": "later"}, {"Retry-After": "7"}))

    with pytest.raises(error_class) as info:
        make_box(server, max_retries=0).run("print(1)")

    assert info.value.retry_after == 7.0
    assert info.value.status == status
    assert len(server.requests) == 1


# --- retries -------------------------------------------------------------------


def test_503_then_200_retries_with_the_same_idempotency_key(
    server: ScriptedServer, no_backoff: list[float]
) -> None:
    server.script(
        Reply(503, {"error": "no capacity"}),
        Reply(200, success_body(), {"X-Credits-Remaining": "99"}),
    )

    result = make_box(server).run("print(2 + 2)")

    assert result.stdout == "4\n"
    assert result.credits_remaining == 99
    first, second = server.requests
    assert first.headers["Idempotency-Key"] == second.headers["Idempotency-Key"]
    assert first.body == second.body
    assert no_backoff == [0.25]  # exponential back-off, first step, zero jitter


def test_429_waits_for_retry_after(server: ScriptedServer) -> None:
    server.script(
        Reply(429, {"error": "slow down"}, {"Retry-After": "1"}),
        Reply(200, success_body()),
    )

    started = time.monotonic()
    result = make_box(server).run("print(2 + 2)")

    assert result.ok
    assert time.monotonic() - started >= 0.95
    assert len(server.requests) == 2


def test_retries_give_up_after_max_retries(server: ScriptedServer, no_backoff: list[float]) -> None:
    server.script(*[Reply(503, {"error": "busy"}, {"Retry-After": "2"})] * 3)

    with pytest.raises(ServiceUnavailableError, match="busy") as info:
        make_box(server).run("print(1)")

    assert info.value.retry_after == 2.0
    assert len(server.requests) == 3  # 1 + max_retries (default 2)
    assert no_backoff == [2.0, 2.0]
    assert len({r.headers["Idempotency-Key"] for r in server.requests}) == 1


def test_connection_refused_is_retried_then_raised(
    refused_url: str, no_backoff: list[float]
) -> None:
    box = Sandbox(api_key=KEY, base_url=refused_url, max_retries=3)

    with pytest.raises(NetworkError, match=r"^network error: ") as info:
        box.run("print(1)")

    assert info.value.status is None
    assert not isinstance(info.value, RequestTimeoutError)
    assert no_backoff == [0.25, 0.5, 1.0]


@pytest.mark.parametrize("base_url", ["api.cinch.codes", "ftp://127.0.0.1", "http://"])
def test_unusable_base_url_fails_fast(base_url: str, no_backoff: list[float]) -> None:
    with pytest.raises(CinchError, match="invalid base_url") as info:
        Sandbox(KEY, base_url).run("print(1)")
    assert not isinstance(info.value, NetworkError)
    assert no_backoff == []


def test_read_timeout_is_not_retried(server: ScriptedServer) -> None:
    server.script(Reply(200, success_body(), delay=0.5))

    with pytest.raises(RequestTimeoutError):
        make_box(server, timeout=0.1).run("print(1)")

    assert len(server.requests) == 1


def test_retry_delay_policy() -> None:
    err = ServiceUnavailableError("busy", 503)
    assert [_retry.retry_delay(n, err, rand=lambda: 0.0) for n in range(6)] == [
        0.25,
        0.5,
        1.0,
        2.0,
        4.0,
        4.0,
    ]
    assert _retry.retry_delay(2, err, rand=lambda: 0.999999) == pytest.approx(2.0)
    assert _retry.retry_delay(0, RateLimitError("x", 429, retry_after=3)) == 3.0
    assert _retry.retry_delay(0, RateLimitError("x", 429, retry_after=3600)) == 30.0


def test_parse_retry_after() -> None:
    assert _retry.parse_retry_after(None) is None
    assert _retry.parse_retry_after("5") == 5.0
    assert _retry.parse_retry_after("-3") == 0.0
    assert _retry.parse_retry_after("soon") is None
    in_ten = format_datetime(datetime.now(UTC) + timedelta(seconds=10), usegmt=True)
    assert 8.0 <= (_retry.parse_retry_after(in_ten) or 0.0) <= 10.0


# --- configuration -------------------------------------------------------------


def test_env_vars_configure_the_client(
    server: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CINCH_API_KEY", "cinch_live_fromenv")
    monkeypatch.setenv("CINCH_BASE_URL", server.base_url + "/")
    server.script(Reply(200, success_body()))

    box = Sandbox()
    box.run("print(1)")

    assert box.base_url == server.base_url
    assert server.requests[0].headers["Authorization"] == "Bearer cinch_live_fromenv"


def test_arguments_override_env_vars(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CINCH_API_KEY", "cinch_live_fromenv")
    monkeypatch.setenv("CINCH_BASE_URL", "http://127.0.0.1:1")
    box = AsyncSandbox("cinch_live_arg", "http://127.0.0.1:2")
    assert (box.api_key, box.base_url) == ("cinch_live_arg", "http://127.0.0.1:2")


def test_default_base_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CINCH_BASE_URL", raising=False)
    assert Sandbox(KEY).base_url == "https://api.cinch.codes"


def test_missing_api_key_raises_value_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CINCH_API_KEY", raising=False)
    with pytest.raises(ValueError, match="CINCH_API_KEY"):
        Sandbox()
    with pytest.raises(ValueError, match="api_key is required"):
        AsyncSandbox(api_key="")


def test_invalid_arguments() -> None:
    box = Sandbox(KEY)
    bad_codes: list[Any] = ["", None, b"print(1)"]
    for bad in bad_codes:
        with pytest.raises(ValueError, match="non-empty string"):
            box.run(bad)
    bad_stdin: Any = b"x"
    with pytest.raises(TypeError, match="stdin"):
        box.run("print(1)", stdin=bad_stdin)
    with pytest.raises(ValueError, match="idempotency_key"):
        box.run("print(1)", idempotency_key="")
    with pytest.raises(ValueError, match="max_retries"):
        Sandbox(KEY, max_retries=-1)


def test_repr_hides_the_api_key() -> None:
    text = repr(Sandbox(KEY, "http://127.0.0.1:9"))
    assert KEY not in text
    assert "cinch_live_" in text


def test_context_manager_reuses_a_pool(server: ScriptedServer) -> None:
    server.script(Reply(200, success_body()), Reply(200, success_body()))
    with make_box(server) as box:
        assert box.run("print(1)").ok
        assert box.run("print(1)").ok
    assert box._client is None
    assert len(server.requests) == 2


# --- backward compatibility with 0.2.0 ----------------------------------------


def test_0_2_0_usage_still_works(server: ScriptedServer) -> None:
    from pangolin.client import DEFAULT_BASE_URL
    from pangolin.client import CinchError as ClientCinchError
    from pangolin.client import Sandbox as ClientSandbox
    from pangolin.client import SandboxResult as ClientSandboxResult

    assert (ClientSandbox, ClientCinchError, ClientSandboxResult) == (
        Sandbox,
        CinchError,
        SandboxResult,
    )
    assert DEFAULT_BASE_URL == "https://api.cinch.codes"
    assert pangolin.__version__ == "0.4.0"

    server.script(Reply(200, success_body()), Reply(401, {"error": "invalid API key"}))
    box = ClientSandbox(KEY, server.base_url + "/", 10.0)  # positional, as in 0.2.0
    assert (box.api_key, box.base_url, box.timeout) == (KEY, server.base_url, 10.0)

    result = box.run("print(2 + 2)", "python")
    assert (result.stdout, result.stderr, result.exit_code, result.timed_out) == (
        "4\n",
        "",
        0,
        False,
    )
    assert result.duration_ms == 42
    assert result.ok

    with pytest.raises(ClientCinchError) as info:  # 0.2.0 code catches the base class
        box.run("print(1)")
    assert (str(info.value), info.value.status) == ("invalid API key", 401)


def test_0_2_0_value_types_still_construct() -> None:
    result = SandboxResult("out", "err", 1, False, 12)
    assert not result.ok
    assert result.termination is None
    assert result.credits_remaining is None
    assert SandboxResult("", "", 0, False, 0).ok
    error = CinchError("boom", status=500)
    assert (str(error), error.status, error.request_id) == ("boom", 500, None)
    assert CinchError("no status").status is None


# --- AsyncSandbox --------------------------------------------------------------


async def test_async_sandbox_under_trio(server: ScriptedServer) -> None:
    server.script(
        Reply(503, {"error": "busy"}, {"Retry-After": "0"}),
        Reply(200, success_body(), {"X-Request-Id": "req_t"}),
        Reply(402, {"error": "out of credits"}),
    )
    assert trio.lowlevel.current_trio_token() is not None

    async with AsyncSandbox(KEY, server.base_url) as box:
        result = await box.run("print(2 + 2)", stdin="")
        with pytest.raises(InsufficientCreditsError, match="out of credits"):
            await box.run("print(1)")

    assert (result.stdout, result.request_id) == ("4\n", "req_t")
    first, second, _ = server.requests
    assert first.headers["Idempotency-Key"] == second.headers["Idempotency-Key"]
    assert second.body == {"code": "print(2 + 2)", "language": "python", "stdin": ""}


async def test_async_sandbox_trio_connection_refused(
    refused_url: str, no_backoff: list[float]
) -> None:
    with pytest.raises(NetworkError):
        await AsyncSandbox(KEY, refused_url, max_retries=1).run("print(1)")
    assert no_backoff == [0.25]


def test_async_sandbox_under_asyncio(server: ScriptedServer) -> None:
    server.script(
        Reply(429, {"error": "slow"}, {"Retry-After": "0"}),
        Reply(200, success_body(stdout="2\n"), {"X-Credits-Remaining": "7"}),
        Reply(401, {"error": "bad key"}),
    )

    async def main() -> SandboxResult:
        asyncio.get_running_loop()  # really on asyncio
        box = AsyncSandbox(KEY, server.base_url)
        result = await box.run("console.log(1 + 1)", "javascript")
        with pytest.raises(AuthenticationError, match="bad key"):
            await box.run("print(1)")
        return result

    result = asyncio.run(main())

    assert (result.stdout, result.credits_remaining) == ("2\n", 7)
    assert len(server.requests) == 3
