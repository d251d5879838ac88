"""The body of ``POST /run``: every field checked, with a message that names what is wrong.

400 for a value that can never be right (a bad path, a bad encoding, a
reserved variable); 413 for one over a size or count limit (which a server
may set higher).  Nothing here touches the database or a sandbox.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from scheduler import InputFile

from ._errors import ApiError

LANGUAGE_ALIASES = {
    "python": "python",
    "python3": "python",
    "py": "python",
    "javascript": "javascript",
    "js": "javascript",
    "node": "javascript",
    "nodejs": "javascript",
}
# Every accepted name, for the 400 message: "python", "python3", "py", "javascript", ...
LANGUAGE_CHOICES = ", ".join(f'"{name}"' for name in LANGUAGE_ALIASES)
# The program's own file in the working directory: a sent file cannot replace it.
PROGRAM_FILES = {"python": "main.py", "javascript": "main.js"}
BAD_BODY = 'the body must be a JSON object like {"code": "print(2 + 2)", "language": "python"}'

MAX_PATH_BYTES = 255
MAX_ARGS = 64
MAX_ARG_BYTES = 4096
MAX_ENV = 64
MAX_ENV_BYTES = 64 * 1024
MAX_CREDITS = 10**12
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# Variables that change how the sandbox or its runtime behaves, not the program.
RESERVED_ENV = re.compile(
    r"(PATH|HOME|LANG|LANGUAGE|PWD|LC_.*|PYTHON.*|NODE_.*|LD_.*|MPL.*|CINCH_.*)\Z"
)
RESERVED_ENV_TEXT = "PATH, HOME, LANG, LANGUAGE, PWD, LC_*, PYTHON*, NODE_*, LD_*, MPL*, CINCH_*"


@dataclass(frozen=True)
class BodyLimits:
    """What a server accepts in one ``/run`` body (from its Config)."""

    max_code_bytes: int = 512 * 1024
    max_stdin_bytes: int = 1024 * 1024
    max_files: int = 64
    max_files_bytes: int = 10 * 1024 * 1024
    max_timeout_ms: int = 10_000

    @classmethod
    def from_config(cls, config: Any) -> BodyLimits:
        return cls(
            max_code_bytes=config.max_code_bytes,
            max_stdin_bytes=config.max_stdin_bytes,
            max_files=config.max_files,
            max_files_bytes=config.max_files_bytes,
            max_timeout_ms=round(config.run_timeout_s * 1000),
        )


@dataclass(frozen=True)
class ParsedRun:
    code: str
    language: str
    stdin: str
    body_hash: bytes
    files: tuple[InputFile, ...] = ()
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    timeout_ms: int | None = None
    max_credits: int | None = None


def parse_run_body(
    raw: bytes, max_code_bytes: int, max_stdin_bytes: int, limits: BodyLimits | None = None
) -> ParsedRun:
    """Validate a ``/run`` body; raises :class:`ApiError` (400 or 413) with a clear message."""
    limits = limits or BodyLimits(max_code_bytes, max_stdin_bytes)
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "the body is not valid JSON; " + BAD_BODY) from None
    if not isinstance(body, dict):
        raise ApiError(400, BAD_BODY)
    code = body.get("code")
    if not isinstance(code, str) or code == "":
        raise ApiError(400, '"code" must be a non-empty string')
    language = body.get("language", "python")
    if not isinstance(language, str) or language.strip().lower() not in LANGUAGE_ALIASES:
        raise ApiError(
            400,
            f'"language" must be one of {LANGUAGE_CHOICES} (in any case); '
            f"got {json.dumps(language, ensure_ascii=False)[:50]}",
        )
    canonical = LANGUAGE_ALIASES[language.strip().lower()]
    stdin = body.get("stdin")
    if stdin is None:
        stdin = ""
    if not isinstance(stdin, str):
        raise ApiError(400, '"stdin" must be a string')
    code_bytes = len(code.encode("utf-8", "surrogatepass"))
    if code_bytes > limits.max_code_bytes:
        raise ApiError(
            413, f'"code" is {code_bytes} bytes; the limit is {limits.max_code_bytes} bytes'
        )
    stdin_bytes = len(stdin.encode("utf-8", "surrogatepass"))
    if stdin_bytes > limits.max_stdin_bytes:
        raise ApiError(
            413, f'"stdin" is {stdin_bytes} bytes; the limit is {limits.max_stdin_bytes} bytes'
        )
    files = _files(body.get("files"), canonical, limits)
    args = _args(body.get("args"))
    env = _env(body.get("env"))
    timeout_ms = _timeout_ms(body.get("timeoutMs"), limits.max_timeout_ms)
    max_credits = _max_credits(body.get("maxCredits"))
    parts: list[Any] = [code, canonical, stdin]
    if files or args or env or timeout_ms is not None or max_credits is not None:
        # Only then: the hash of a plain run stays what it was.
        parts.append(
            {
                "files": [[f.path, hashlib.sha256(f.content).hexdigest()] for f in files],
                "args": list(args),
                "env": [list(item) for item in env],
                "timeoutMs": timeout_ms,
                "maxCredits": max_credits,
            }
        )
    digest = hashlib.sha256(
        json.dumps(parts, ensure_ascii=False).encode("utf-8", "surrogatepass")
    ).digest()
    return ParsedRun(code, canonical, stdin, digest, files, args, env, timeout_ms, max_credits)


def _quoted(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)[:80]


def _utf8(value: str, what: str) -> bytes:
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(400, f"{what} is not valid Unicode text (a lone surrogate)") from None


def check_path(path: Any, index: int) -> str:
    """``files[index].path``: relative, normalized, at most 255 bytes; else 400."""
    if not isinstance(path, str) or path == "":
        raise ApiError(400, f'"files"[{index}]: "path" must be a non-empty string')
    where = f'"files"[{index}] ({_quoted(path)})'
    if "\x00" in path:
        raise ApiError(400, f"{where}: the path must not contain NUL")
    raw = _utf8(path, f"{where}: the path")
    if len(raw) > MAX_PATH_BYTES:
        raise ApiError(400, f"{where}: the path is {len(raw)} bytes; at most {MAX_PATH_BYTES}")
    if path.startswith("/"):
        raise ApiError(400, f"{where}: the path must be relative (no leading /)")
    parts = path.split("/")
    if ".." in parts:
        raise ApiError(400, f'{where}: the path must not contain ".." segments')
    if any(p in ("", ".") for p in parts):
        raise ApiError(400, f'{where}: the path must not have empty or "." segments')
    if parts[0] == "out":
        raise ApiError(
            400, f"{where}: out/ starts empty: it is where the program leaves files to return"
        )
    return path


def _files(value: Any, language: str, limits: BodyLimits) -> tuple[InputFile, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ApiError(400, '"files" must be a list of {"path", "content", "encoding"} objects')
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise ApiError(400, f'"files"[{index}] must be an object with "path" and "content"')
    if len(value) > limits.max_files:
        raise ApiError(413, f'"files" has {len(value)} files; at most {limits.max_files}')
    out: list[InputFile] = []
    total = 0
    seen: set[str] = set()
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise ApiError(400, f'"files"[{index}] must be an object with "path" and "content"')
        path = check_path(item.get("path"), index)
        where = f'"files"[{index}] ({_quoted(path)})'
        if path in seen:
            raise ApiError(400, f"{where}: the same path is sent twice")
        if path == PROGRAM_FILES[language]:
            raise ApiError(400, f'{where}: {path} is the program itself (send it as "code")')
        seen.add(path)
        content = item.get("content")
        if not isinstance(content, str):
            raise ApiError(400, f'{where}: "content" must be a string')
        encoding = item.get("encoding", "utf-8")
        if not isinstance(encoding, str) or encoding.lower() not in ("utf-8", "utf8", "base64"):
            raise ApiError(400, f'{where}: "encoding" must be "utf-8" or "base64"')
        if encoding.lower() == "base64":
            try:
                data = base64.b64decode(content.encode("ascii"), validate=True)
            except (UnicodeEncodeError, binascii.Error):
                raise ApiError(400, f'{where}: "content" is not valid base64') from None
        else:
            data = _utf8(content, f'{where}: "content"')
        total += len(data)
        if total > limits.max_files_bytes:
            raise ApiError(
                413,
                f'"files" hold more than {limits.max_files_bytes} bytes in all (decoded); '
                f"the limit is {limits.max_files_bytes} bytes",
            )
        out.append(InputFile(path, data))
    # A file cannot also be a directory of another: "a" and "a/b".
    for path in seen:
        parts = path.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent in seen:
                raise ApiError(
                    400, f'"files": {_quoted(parent)} is a file, so {_quoted(path)} cannot be in it'
                )
    return tuple(out)


def _args(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
        raise ApiError(400, '"args" must be a list of strings')
    if len(value) > MAX_ARGS:
        raise ApiError(413, f'"args" has {len(value)} items; at most {MAX_ARGS}')
    for index, arg in enumerate(value):
        if "\x00" in arg:
            raise ApiError(400, f'"args"[{index}] must not contain NUL')
        size = len(_utf8(arg, f'"args"[{index}]'))
        if size > MAX_ARG_BYTES:
            raise ApiError(413, f'"args"[{index}] is {size} bytes; at most {MAX_ARG_BYTES}')
    return tuple(value)


def _env(value: Any) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise ApiError(400, '"env" must be an object of names to string values')
    if len(value) > MAX_ENV:
        raise ApiError(413, f'"env" has {len(value)} variables; at most {MAX_ENV}')
    total = 0
    for name, text in value.items():
        if not ENV_NAME.match(name):
            raise ApiError(
                400, f'"env": {_quoted(name)} is not a variable name ([A-Za-z_][A-Za-z0-9_]*)'
            )
        if RESERVED_ENV.match(name):
            raise ApiError(
                400,
                f'"env": {name} is reserved: it would change how the sandbox runs '
                f"(reserved: {RESERVED_ENV_TEXT})",
            )
        if not isinstance(text, str):
            raise ApiError(400, f'"env"."{name}" must be a string')
        if "\x00" in text:
            raise ApiError(400, f'"env"."{name}" must not contain NUL')
        total += len(name) + 1 + len(_utf8(text, f'"env"."{name}"'))
    if total > MAX_ENV_BYTES:
        raise ApiError(413, f'"env" is {total} bytes in all; at most {MAX_ENV_BYTES}')
    return tuple(value.items())


def _integer(value: Any) -> bool:
    """A JSON integer: 500, or 500.0 (JSON Schema's "integer" means integral)."""
    if isinstance(value, float):
        return value.is_integer()
    return isinstance(value, int) and not isinstance(value, bool)


def _timeout_ms(value: Any, limit: int) -> int | None:
    if value is None:
        return None
    if not _integer(value) or not 1 <= value <= limit:
        raise ApiError(
            400, f'"timeoutMs" must be an integer from 1 to {limit} (this server\'s limit)'
        )
    return int(value)


def _max_credits(value: Any) -> int | None:
    if value is None:
        return None
    if not _integer(value) or not 1 <= value <= MAX_CREDITS:
        raise ApiError(400, '"maxCredits" must be a positive integer')
    return int(value)
