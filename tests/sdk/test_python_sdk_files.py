"""pangolin's files in and out, args, env, timeout_ms and max_credits, against a scripted server."""

from __future__ import annotations

import asyncio
import base64
import os
from pathlib import Path
from typing import Any

import pytest
from pangolin import (
    AsyncSandbox,
    BadRequestError,
    CinchError,
    File,
    OutputFile,
    Sandbox,
    SandboxResult,
    _save,
)
from sdk_fake_api import Reply, ScriptedServer, success_body

KEY = "cinch_live_0123456789abcdef"
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\x00"


def box(server: ScriptedServer) -> Sandbox:
    return Sandbox(api_key=KEY, base_url=server.base_url, max_retries=0)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def result_with(*files: OutputFile) -> SandboxResult:
    return SandboxResult("", "", 0, False, 1, files=list(files))


# --- the request ---------------------------------------------------------------


def test_new_fields_are_not_sent_unless_given(server: ScriptedServer) -> None:
    server.script(Reply(200, success_body()), Reply(events=[("result", success_body())]))
    box(server).run("print(1)")
    list(box(server).stream("print(1)"))
    for request in server.requests:
        assert request.body == {"code": "print(1)", "language": "python"}


def test_every_field_is_sent_in_camel_case(server: ScriptedServer) -> None:
    server.script(Reply(200, success_body()))

    box(server).run(
        "import sys",
        stdin="in",
        files={"data.csv": "a,b\n1,2\n", "img/logo.png": PNG},
        args=["--rows", "2", ""],
        env={"MODE": "fast", "EMPTY": ""},
        timeout_ms=500,
        max_credits=50,
    )

    assert server.requests[0].body == {
        "code": "import sys",
        "language": "python",
        "stdin": "in",
        "files": [
            {"path": "data.csv", "content": "a,b\n1,2\n", "encoding": "utf-8"},
            {"path": "img/logo.png", "content": b64(PNG), "encoding": "base64"},
        ],
        "args": ["--rows", "2", ""],
        "env": {"MODE": "fast", "EMPTY": ""},
        "timeoutMs": 500,
        "maxCredits": 50,
    }


def test_files_as_a_list_of_file_and_pairs(server: ScriptedServer) -> None:
    server.script(Reply(200, success_body()))

    box(server).run(
        "x",
        files=[
            File("a.txt", "héllo"),
            File("b.bin", bytearray(b"\x00\x01")),
            File("c.bin", b64(b"pre-encoded"), encoding="base64"),
            File("d.txt", "text", encoding="utf-8"),
            ("e.bin", b""),
            ("f.txt", ""),
        ],
    )

    assert server.requests[0].body["files"] == [
        {"path": "a.txt", "content": "héllo", "encoding": "utf-8"},
        {"path": "b.bin", "content": "AAE=", "encoding": "base64"},
        {"path": "c.bin", "content": b64(b"pre-encoded"), "encoding": "base64"},
        {"path": "d.txt", "content": "text", "encoding": "utf-8"},
        {"path": "e.bin", "content": "", "encoding": "base64"},
        {"path": "f.txt", "content": "", "encoding": "utf-8"},
    ]


def test_empty_collections_are_sent_as_given(server: ScriptedServer) -> None:
    server.script(Reply(200, success_body()))
    box(server).run("x", files={}, args=(), env={})
    body = server.requests[0].body
    assert (body["files"], body["args"], body["env"]) == ([], [], {})


def test_paths_and_limits_are_left_to_the_server(server: ScriptedServer) -> None:
    server.script(Reply(200, success_body()))
    box(server).run("x", files=[("../x", "a"), ("../x", "b")], timeout_ms=0, max_credits=-1)
    body = server.requests[0].body
    assert [f["path"] for f in body["files"]] == ["../x", "../x"]
    assert (body["timeoutMs"], body["maxCredits"]) == (0, -1)


bad_arguments: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"files": "data.csv"}, TypeError, "files must be a mapping"),
    ({"files": b"x"}, TypeError, "files must be a mapping"),
    ({"files": 3}, TypeError, "files must be a mapping"),
    ({"files": [3]}, TypeError, r"files\[0\] must be a File"),
    ({"files": [("a", "b", "c")]}, TypeError, r"files\[0\] must be a File"),
    ({"files": {"a.txt": 3}}, TypeError, "'a.txt': content must be str or bytes, not int"),
    ({"files": {Path("a.txt"): "x"}}, TypeError, r"files\[0\]: the path must be a string"),
    ({"files": [File("a", b"x", encoding="utf-8")]}, ValueError, "bytes are sent as base64"),
    ({"files": [File("a", "x", encoding="latin-1")]}, ValueError, "'utf-8' or 'base64'"),  # type: ignore[arg-type]
    ({"args": "--verbose"}, TypeError, "not a single string"),
    ({"args": ["a", 1]}, TypeError, r"args\[1\] must be a string"),
    ({"env": [("A", "b")]}, TypeError, "env must be a mapping"),
    ({"env": {"A": 1}}, TypeError, r"env\['A'\]"),
    ({"timeout_ms": 1.5}, TypeError, "timeout_ms must be an integer"),
    ({"timeout_ms": True}, TypeError, "timeout_ms must be an integer"),
    ({"max_credits": "50"}, TypeError, "max_credits must be an integer"),
]


@pytest.mark.parametrize(("kwargs", "error", "message"), bad_arguments)
def test_wrong_types_fail_before_any_request(
    server: ScriptedServer, kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        box(server).run("x", **kwargs)
    with pytest.raises(error, match=message):
        next(box(server).stream("x", **kwargs))
    assert server.requests == []


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (400, "files[1] 'a/../b': a path must not contain '..'"),
        (400, "env: 'PATH' may not be set"),
        (400, '"timeoutMs" is 90000; the limit is 10000'),
        (413, "files are 11534336 bytes decoded; the limit is 10485760"),
    ],
)
def test_server_refusals_come_back_as_they_are(
    server: ScriptedServer, status: int, message: str
) -> None:
    server.script(Reply(status, {"error": message}, {"X-Request-Id": "req_f"}))
    with pytest.raises(BadRequestError) as info:
        box(server).run("x", files={"a": "b"})
    assert (info.value.message, info.value.status, info.value.request_id) == (
        message,
        status,
        "req_f",
    )


# --- the response --------------------------------------------------------------

FILES_BODY = success_body(
    files=[
        {"path": "out/chart.png", "size": len(PNG), "mimeType": "image/png", "content": b64(PNG)},
        {"path": "out/empty.txt", "size": 0, "mimeType": "text/plain", "content": ""},
        {"path": "out/big.bin", "size": 9_000_000, "mimeType": "application/octet-stream"},
        {"path": "out/big2.bin", "size": 7, "mimeType": None, "content": None},
    ],
    filesTruncated=True,
)


def check_files(result: SandboxResult) -> None:
    assert result.files == [
        OutputFile("out/chart.png", len(PNG), "image/png", PNG),
        OutputFile("out/empty.txt", 0, "text/plain", b""),
        OutputFile("out/big.bin", 9_000_000, "application/octet-stream", None),
        OutputFile("out/big2.bin", 7, None, None),
    ]
    assert [f.truncated for f in result.files] == [False, False, True, True]
    assert result.files_truncated


def test_output_files_are_decoded(server: ScriptedServer) -> None:
    server.script(Reply(200, FILES_BODY))
    check_files(box(server).run("x"))


def test_output_files_come_in_the_streamed_result(server: ScriptedServer) -> None:
    server.script(Reply(events=[("stdout", {"text": "4\n"}), ("result", FILES_BODY)]))
    *_, result = box(server).stream("x")
    assert isinstance(result, SandboxResult)
    check_files(result)


def test_a_server_without_output_files_gives_none(server: ScriptedServer) -> None:
    server.script(Reply(200, success_body()))
    result = box(server).run("x")
    assert (result.files, result.files_truncated) == ([], False)


def test_a_missing_size_is_the_content_length(server: ScriptedServer) -> None:
    server.script(Reply(200, success_body(files=[{"path": "out/a", "content": b64(b"abc")}])))
    assert box(server).run("x").files == [OutputFile("out/a", 3, None, b"abc")]


def test_the_content_stays_out_of_repr() -> None:
    text = repr(OutputFile("out/a", 3, "text/plain", b"secret"))
    assert "secret" not in text
    assert "out/a" in text


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"path": "out/a"}, "'files' is not a list"),
        ([{"path": "out/a", "content": "not base64!"}], "content of 'out/a' is not base64"),
        ([{"path": "out/a", "content": 5}], "content of 'out/a' is not base64"),
        ([{"size": 1}], "a file without a path"),
        (["out/a"], "a file without a path"),
    ],
)
def test_malformed_output_files_are_an_invalid_response(
    server: ScriptedServer, files: Any, message: str
) -> None:
    server.script(Reply(200, success_body(files=files), {"X-Request-Id": "req_m"}))
    with pytest.raises(CinchError, match=f"^invalid response from server: .*{message}") as info:
        box(server).run("x")
    assert (info.value.status, info.value.request_id) == (200, "req_m")


# --- async ---------------------------------------------------------------------


async def test_async_run_under_trio(server: ScriptedServer) -> None:
    server.script(Reply(200, FILES_BODY))
    async with AsyncSandbox(KEY, server.base_url) as sandbox:
        result = await sandbox.run(
            "x",
            files=[("in.bin", b"\xff")],
            args=["a"],
            env={"K": "v"},
            timeout_ms=9,
            max_credits=3,
        )
    check_files(result)
    assert server.requests[0].body == {
        "code": "x",
        "language": "python",
        "files": [{"path": "in.bin", "content": "/w==", "encoding": "base64"}],
        "args": ["a"],
        "env": {"K": "v"},
        "timeoutMs": 9,
        "maxCredits": 3,
    }


def test_async_stream_under_asyncio(server: ScriptedServer) -> None:
    server.script(Reply(events=[("result", FILES_BODY)]))

    async def main() -> list[object]:
        sandbox = AsyncSandbox(KEY, server.base_url)
        return [e async for e in sandbox.stream("x", files={"a.csv": "1"}, max_credits=5)]

    (result,) = asyncio.run(main())
    assert isinstance(result, SandboxResult)
    check_files(result)
    body = server.requests[0].body
    assert (body["files"], body["maxCredits"]) == (
        [{"path": "a.csv", "content": "1", "encoding": "utf-8"}],
        5,
    )


async def test_async_wrong_types_fail_before_any_request(server: ScriptedServer) -> None:
    sandbox = AsyncSandbox(KEY, server.base_url)
    with pytest.raises(TypeError, match="args"):
        await sandbox.run("x", args="a b")
    with pytest.raises(TypeError, match="files"):
        await sandbox.stream("x", files="a").__anext__()
    assert server.requests == []


# --- save_files ------------------------------------------------------------------


@pytest.fixture(params=["openat", "checked"])
def save_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs a test with the race-free POSIX writer and with the portable fallback."""
    if request.param == "checked":
        monkeypatch.setattr(_save, "_DIR_FD", False)
    elif not _save._DIR_FD:
        pytest.skip("this platform has no dir_fd support")
    return str(request.param)


def listing(root: Path) -> dict[str, bytes | str]:
    found: dict[str, bytes | str] = {}
    for path in sorted(root.rglob("*")):
        name = path.relative_to(root).as_posix()
        if path.is_symlink():
            found[name] = f"-> {os.readlink(path)}"
        elif path.is_file():
            found[name] = path.read_bytes()
    return found


def test_save_files_writes_each_file_with_content(tmp_path: Path, save_mode: str) -> None:
    result = result_with(
        OutputFile("out/chart.png", len(PNG), "image/png", PNG),
        OutputFile("out/big.bin", 10, None, None),  # left out by the server: skipped
        OutputFile("out/deep/./er//x.txt", 1, "text/plain", b"x"),
        OutputFile("out/empty", 0, None, b""),
    )
    target = tmp_path / "new" / "results"

    written = result.save_files(target)

    assert written == [
        target / "out" / "chart.png",
        target / "out" / "deep" / "er" / "x.txt",
        target / "out" / "empty",
    ]
    assert listing(target) == {
        "out/chart.png": PNG,
        "out/deep/er/x.txt": b"x",
        "out/empty": b"",
    }


def test_one_file_saves_itself_with_the_same_checks(tmp_path: Path, save_mode: str) -> None:
    chart = OutputFile("out/chart.png", len(PNG), "image/png", PNG)

    assert chart.save(tmp_path) == tmp_path / "out" / "chart.png"
    assert listing(tmp_path) == {"out/chart.png": PNG}
    with pytest.raises(ValueError, match="left its content out"):
        OutputFile("out/big.bin", 10, None, None).save(tmp_path)
    with pytest.raises(ValueError, match="refusing to save"):
        OutputFile("../escape.txt", 1, None, b"x").save(tmp_path / "inside")
    assert not (tmp_path / "escape.txt").exists()


def test_save_files_replaces_existing_files(tmp_path: Path, save_mode: str) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a.txt").write_bytes(b"old and longer")
    result_with(OutputFile("out/a.txt", 3, None, b"new")).save_files(str(tmp_path))
    assert listing(tmp_path) == {"out/a.txt": b"new"}


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("../../etc/x", "'..' segment"),
        ("out/../../x", "'..' segment"),
        ("out/..", "'..' segment"),
        ("/etc/passwd", "absolute"),
        ("//host/x", "absolute"),
        ("out/a\0b", "NUL"),
        ("", "path ''"),
        ("./", "names no file"),
    ],
)
def test_save_files_refuses_paths_that_leave_the_folder(
    tmp_path: Path, save_mode: str, path: str, why: str
) -> None:
    inside = tmp_path / "inside"
    result = result_with(
        OutputFile("out/fine.txt", 1, None, b"f"),  # listed first, still not written
        OutputFile(path, 1, None, b"x"),
    )
    with pytest.raises(ValueError, match=why):
        result.save_files(inside)
    assert listing(tmp_path) == {}


def test_save_files_refuses_a_symlinked_parent(tmp_path: Path, save_mode: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    inside = tmp_path / "inside"
    (inside / "out").mkdir(parents=True)
    (inside / "out" / "link").symlink_to(outside, target_is_directory=True)
    (inside / "top").symlink_to(outside, target_is_directory=True)
    (inside / "dangling").symlink_to(tmp_path / "nowhere")

    for path in ("out/link/x", "top/x", "out/link/deeper/x", "dangling/x"):
        with pytest.raises(ValueError, match="is a symbolic link"):
            result_with(OutputFile(path, 1, None, b"x")).save_files(inside)

    assert list(outside.iterdir()) == []
    assert not (tmp_path / "nowhere").exists()


def test_save_files_replaces_a_symlink_at_the_name(tmp_path: Path, save_mode: str) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    inside = tmp_path / "inside"
    inside.mkdir()
    (inside / "x").symlink_to(victim)

    result_with(OutputFile("x", 3, None, b"new")).save_files(inside)

    assert victim.read_bytes() == b"precious"
    assert not (inside / "x").is_symlink()
    assert (inside / "x").read_bytes() == b"new"


def test_save_files_leaves_no_partial_file_when_a_write_fails(
    tmp_path: Path, save_mode: str
) -> None:
    (tmp_path / "out" / "a").mkdir(parents=True)  # a folder where the file should go
    with pytest.raises(IsADirectoryError):
        result_with(OutputFile("out/a", 1, None, b"x")).save_files(tmp_path)
    (tmp_path / "file").write_bytes(b"f")
    with pytest.raises(NotADirectoryError):
        result_with(OutputFile("file/x", 1, None, b"x")).save_files(tmp_path)
    assert listing(tmp_path) == {"file": b"f"}


@pytest.mark.parametrize(
    "path", ["C:/Windows/x", "out\\..\\..\\x", "c:x", "out/CON", "out/nul.txt", "out/com1 .log"]
)
def test_windows_readings_of_a_path_are_refused_there(path: str) -> None:
    assert _save.split_path(path, windows=False)  # ordinary names on POSIX
    with pytest.raises(ValueError, match="refusing to save"):
        _save.split_path(path, windows=True)
