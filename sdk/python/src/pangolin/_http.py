"""Transport-independent pieces of a ``POST /run`` exchange."""

from __future__ import annotations

import base64
import binascii
import json
import platform
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from ._retry import parse_retry_after
from ._version import __version__
from .errors import CinchError, NetworkError, RequestTimeoutError, error_for_status
from .models import File, InputFiles, OutputChunk, OutputFile, SandboxResult, StreamEvent

USER_AGENT = f"pangolin-sdk/{__version__} python/{platform.python_version()}"
EVENT_STREAM = "text/event-stream"


@dataclass(frozen=True)
class RunRequest:
    """A fully prepared ``POST /run``, sent unchanged on every attempt."""

    url: str
    headers: dict[str, str]
    content: bytes


def prepare_run(
    *,
    base_url: str,
    api_key: str,
    code: str,
    language: str,
    stdin: str | None,
    idempotency_key: str | None,
    stream: bool = False,
    files: InputFiles | None = None,
    args: Iterable[str] | None = None,
    env: Mapping[str, str] | None = None,
    timeout_ms: int | None = None,
    max_credits: int | None = None,
) -> RunRequest:
    """Validates the arguments of a run and builds its request.

    Only the types are checked here; the limits (sizes, counts, paths,
    variable names, the server's time limit) are the server's to enforce,
    and it names what it refuses. An argument left at ``None`` is not sent, so
    a server that predates it sees the same body as before.

    Args:
        base_url: The API root, without a trailing slash.
        api_key: The bearer token.
        code: Source code to run; must be a non-empty string.
        language: The language name understood by the server.
        stdin: Optional standard input for the program.
        idempotency_key: Caller-chosen key; a random UUID4 when ``None``.
        stream: Ask for server-sent events instead of one JSON answer.
        files: Files to write before the program starts.
        args: The program's command-line arguments.
        env: Extra environment variables.
        timeout_ms: A lower wall-clock limit for this run.
        max_credits: The most this run may cost.

    Returns:
        The request to send.

    Raises:
        ValueError: If ``code`` or ``idempotency_key`` is empty or not a
            string, or a file's ``encoding`` is unknown or does not fit its
            content.
        TypeError: If another argument has the wrong type.
    """
    if not isinstance(code, str) or not code:
        raise ValueError("code must be a non-empty string")
    if not isinstance(language, str):
        raise TypeError("language must be a string")
    if stdin is not None and not isinstance(stdin, str):
        raise TypeError("stdin must be a string")
    if idempotency_key is None:
        idempotency_key = str(uuid.uuid4())
    elif not isinstance(idempotency_key, str) or not idempotency_key:
        raise ValueError("idempotency_key must be a non-empty string")

    body: dict[str, Any] = {"code": code, "language": language}
    if stdin is not None:
        body["stdin"] = stdin
    if files is not None:
        body["files"] = _files_to_json(files)
    if args is not None:
        body["args"] = _args_to_json(args)
    if env is not None:
        body["env"] = _env_to_json(env)
    if timeout_ms is not None:
        body["timeoutMs"] = _int_arg("timeout_ms", timeout_ms)
    if max_credits is not None:
        body["maxCredits"] = _int_arg("max_credits", max_credits)
    return RunRequest(
        url=f"{base_url}/run",
        headers={
            "Authorization": f"Bearer {api_key}",
            "Content-Type": "application/json",
            "Accept": EVENT_STREAM if stream else "application/json",
            "User-Agent": USER_AGENT,
            "Idempotency-Key": idempotency_key,
        },
        content=json.dumps(body).encode("utf-8"),
    )


def _files_to_json(files: InputFiles) -> list[dict[str, str]]:
    if isinstance(files, (str, bytes, bytearray, memoryview)):
        raise TypeError(_FILES_TYPE)
    if isinstance(files, Mapping):
        items: list[Any] = [File(path, content) for path, content in files.items()]
    else:
        try:
            items = list(files)
        except TypeError:
            raise TypeError(_FILES_TYPE) from None
    return [_file_to_json(index, item) for index, item in enumerate(items)]


_FILES_TYPE = "files must be a mapping of path to content, or a list of File or (path, content)"


def _file_to_json(index: int, item: Any) -> dict[str, str]:
    if isinstance(item, tuple) and len(item) == 2:
        item = File(*item)
    if not isinstance(item, File):
        raise TypeError(f"files[{index}] must be a File or a (path, content) pair, not {item!r}")
    path, content, encoding = item.path, item.content, item.encoding
    if not isinstance(path, str):
        raise TypeError(f"files[{index}]: the path must be a string, not {type(path).__name__}")
    if isinstance(content, str):
        if encoding not in (None, "utf-8", "base64"):
            raise ValueError(f"file {path!r}: encoding must be 'utf-8' or 'base64'")
        return {"path": path, "content": content, "encoding": encoding or "utf-8"}
    if isinstance(content, (bytes, bytearray, memoryview)):
        if encoding not in (None, "base64"):
            raise ValueError(f"file {path!r}: bytes are sent as base64; pass str for utf-8 text")
        text = base64.b64encode(content).decode("ascii")
        return {"path": path, "content": text, "encoding": "base64"}
    raise TypeError(f"file {path!r}: content must be str or bytes, not {type(content).__name__}")


def _args_to_json(args: Iterable[str]) -> list[str]:
    if isinstance(args, (str, bytes)):  # would be split into characters
        raise TypeError("args must be a list of strings, not a single string")
    values = list(args)
    for index, value in enumerate(values):
        if not isinstance(value, str):
            raise TypeError(f"args[{index}] must be a string, not {type(value).__name__}")
    return values


def _env_to_json(env: Mapping[str, str]) -> dict[str, str]:
    if not isinstance(env, Mapping):
        raise TypeError("env must be a mapping of names to strings")
    for name, value in env.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise TypeError(f"env[{name!r}] must be a string named by a string")
    return dict(env)


def _int_arg(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, not {type(value).__name__}")
    return value


def parse_response(response: httpx.Response) -> SandboxResult:
    """Turns a ``/run`` response into a result or raises the matching error.

    Args:
        response: A response whose body has been read.

    Returns:
        The parsed result of a successful run.

    Raises:
        CinchError: Or one of its subclasses, for any non-2xx status or a
            malformed success body.
    """
    request_id = response.headers.get("x-request-id")
    if not response.is_success:
        raise error_for_status(
            response.status_code,
            _error_message(response),
            request_id=request_id,
            retry_after=parse_retry_after(response.headers.get("retry-after")),
        )
    try:
        data = response.json()
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise CinchError(
            "invalid response from server: expected a JSON object",
            response.status_code,
            request_id=request_id,
        )
    return _result_from_json(data, response, request_id)


def transport_error(exc: httpx.TransportError | httpx.InvalidURL) -> CinchError:
    """Maps an httpx failure to get a response to the SDK's exception.

    Args:
        exc: The exception raised by httpx.

    Returns:
        A :class:`RequestTimeoutError` for read/write timeouts, a plain
        :class:`CinchError` for an unusable ``base_url`` (never retried), and
        otherwise a :class:`NetworkError` (connection refused, reset, DNS,
        connect timeout).
    """
    reason = str(exc) or type(exc).__name__
    if isinstance(exc, (httpx.ReadTimeout, httpx.WriteTimeout)):
        return RequestTimeoutError(f"request timed out: {reason}")
    if isinstance(exc, (httpx.UnsupportedProtocol, httpx.InvalidURL)):
        return CinchError(f"invalid base_url: {reason}")
    return NetworkError(f"network error: {reason}")


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        body = None
    message = body.get("error") if isinstance(body, dict) else None
    if isinstance(message, str):
        return message
    return response.reason_phrase or f"HTTP {response.status_code}"


def _result_from_json(
    data: Mapping[str, Any], response: httpx.Response, request_id: str | None
) -> SandboxResult:
    return SandboxResult(
        stdout=str(data.get("stdout") or ""),
        stderr=str(data.get("stderr") or ""),
        exit_code=_optional_int(data.get("exitCode")),
        timed_out=bool(data.get("timedOut", False)),
        duration_ms=_optional_int(data.get("durationMs")) or 0,
        termination=data.get("termination"),
        signal=data.get("signal"),
        truncated=bool(data.get("truncated", False)),
        queue_ms=_optional_int(data.get("queueMs")),
        credits_charged=_optional_int(data.get("creditsCharged")),
        credits_remaining=_optional_int(response.headers.get("x-credits-remaining")),
        request_id=request_id,
        files=_output_files(data.get("files"), response),
        files_truncated=bool(data.get("filesTruncated", False)),
    )


def _output_files(value: Any, response: httpx.Response) -> list[OutputFile]:
    if value is None:
        return []  # a server that predates output files
    if not isinstance(value, list):
        raise _invalid("'files' is not a list", response)
    files = []
    for item in value:
        if not isinstance(item, dict) or not isinstance(item.get("path"), str):
            raise _invalid("a file without a path", response)
        path, encoded = item["path"], item.get("content")
        content = None
        if encoded is not None:
            if not isinstance(encoded, str):
                raise _invalid(f"the content of {path!r} is not base64", response)
            try:
                content = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                raise _invalid(f"the content of {path!r} is not base64", response) from None
        size = _optional_int(item.get("size"))
        mime_type = item.get("mimeType")
        files.append(
            OutputFile(
                path=path,
                size=size if size is not None else len(content or b""),
                mime_type=mime_type if isinstance(mime_type, str) else None,
                content=content,
            )
        )
    return files


def _invalid(what: str, response: httpx.Response) -> CinchError:
    return CinchError(
        f"invalid response from server: {what}",
        response.status_code,
        request_id=response.headers.get("x-request-id"),
    )


def _optional_int(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def is_event_stream(response: httpx.Response) -> bool:
    """Whether a ``/run`` answer is a stream (else it is JSON: an error, or a
    server that does not stream, whose one result is the whole stream)."""
    content_type = response.headers.get("content-type", "")
    return response.is_success and content_type.split(";")[0].strip() == EVENT_STREAM


class EventReader:
    """Server-sent events from the raw body, fed in pieces as they arrive.

    Lines end at LF, CR or CRLF only (not at every character
    ``str.splitlines`` breaks on, which JSON text may hold).
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._event = ""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[tuple[str, str]]:
        self._buffer += chunk
        events = []
        while True:
            cut = min(
                (i for i in (self._buffer.find(b"\n"), self._buffer.find(b"\r")) if i >= 0),
                default=-1,
            )
            if cut < 0 or (self._buffer[cut : cut + 1] == b"\r" and cut + 1 == len(self._buffer)):
                break  # no whole line yet (a CR may be the first half of CRLF)
            line = self._buffer[:cut].decode("utf-8", "replace")
            step = 2 if self._buffer[cut : cut + 2] == b"\r\n" else 1
            self._buffer = self._buffer[cut + step :]
            event = self._line(line)
            if event is not None:
                events.append(event)
        return events

    def _line(self, line: str) -> tuple[str, str] | None:
        if not line:
            event, data = self._event or "message", self._data
            self._event, self._data = "", []
            return (event, "\n".join(data)) if data else None
        if line.startswith(":"):
            return None
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            self._event = value
        elif field == "data":
            self._data.append(value)
        return None


def stream_event(event: str, data: str, response: httpx.Response) -> StreamEvent | None:
    """One server-sent event as an SDK value; ``None`` for an event this SDK does not know.

    Raises:
        CinchError: For an ``error`` event (the run failed on the server's side
            after it began) or a malformed event.
    """
    request_id = response.headers.get("x-request-id")
    try:
        payload = json.loads(data)
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        raise CinchError(
            f"invalid {event!r} event from server: expected a JSON object",
            response.status_code,
            request_id=request_id,
        )
    if event in ("stdout", "stderr"):
        return OutputChunk(event, str(payload.get("text") or ""))
    if event == "result":
        result = _result_from_json(payload, response, request_id)
        result.credits_remaining = None  # the header predates the run
        return result
    if event == "error":
        raise CinchError(
            str(payload.get("error") or "the run failed"),
            response.status_code,
            request_id=request_id,
        )
    return None
