"""Files, args and env cross the API-to-agent wire unchanged (issue 18, docs/scale-out.md)."""

from __future__ import annotations

import json

import pytest

from api._wire import (
    WireError,
    request_from_json,
    request_to_json,
    result_from_json,
    result_to_json,
)
from scheduler import InputFile, OutputFile, RunRequest, RunResult, Termination


def _through_json(body: dict) -> dict:
    return json.loads(json.dumps(body))


def test_request_with_files_args_and_env_round_trips() -> None:
    request = RunRequest(
        language="python",
        code="print(1)",
        files=(InputFile("data.csv", b"a,b\n"), InputFile("bin/x", bytes(range(256)))),
        args=("one", "ünï"),
        env=(("A", "1"), ("B", "two words")),
        out_max_files=3,
        out_max_bytes=1000,
    )
    assert request_from_json(_through_json(request_to_json(request))) == request


def test_result_with_files_round_trips() -> None:
    result = RunResult(
        stdout="",
        stderr="",
        exit_code=0,
        termination=Termination.EXITED,
        signal=None,
        truncated=False,
        duration_ms=5,
        queue_ms=0,
        billable=True,
        language="python",
        files=(OutputFile("out/a.png", 3, b"\x89PN"), OutputFile("out/big", 10**9, None)),
        files_truncated=True,
    )
    assert result_from_json(_through_json(result_to_json(result))) == result


def test_bad_file_content_on_the_wire_is_a_wire_error() -> None:
    body = request_to_json(RunRequest(language="python", code="x"))
    body["files"] = [{"path": "a", "content": "!!"}]
    with pytest.raises(WireError):
        request_from_json(body)
