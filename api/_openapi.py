"""OpenAPI 3.1 description of the public API, matching what the server does."""

from __future__ import annotations

from typing import Any

from ._config import Config
from ._runs import LANGUAGE_ALIASES

LANGUAGES = ("python", "javascript")


_COUNT = {"type": "string", "pattern": "^[0-9]+$"}
RATE_LIMIT_HEADERS = {
    "RateLimit-Limit": {
        "description": "Requests this key may make per second (its token bucket's rate)",
        "schema": _COUNT,
    },
    "RateLimit-Remaining": {
        "description": "Requests this key may still make right now",
        "schema": _COUNT,
    },
    "RateLimit-Reset": {
        "description": "Seconds until the bucket is full again",
        "schema": _COUNT,
    },
}
_RETRY_AFTER = {"description": "Seconds to wait before retrying", "schema": _COUNT}


def _error(
    description: str, *, retry: bool = False, extra_headers: dict[str, Any] | None = None
) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    headers = dict(extra_headers or {})
    if retry:
        headers["Retry-After"] = _RETRY_AFTER
    if headers:
        response["headers"] = headers
    return response


# OpenAPI 3.1 has no schema for a sequence of events: the stream is described in
# words, and each event's data in the 3.2 style (itemSchema) as an extension.
_EVENT_STREAM: dict[str, Any] = {
    "description": "Sent when the request has `Accept: text/event-stream`. Server-sent events "
    'as the program runs: `stdout` and `stderr` (data `{"text": ...}`, in the order written, '
    "never splitting a character, together at most the 1 MB output cap), then one `result` "
    "(data: the RunResult object, with stdout and stderr in full) and the stream ends; or "
    "`error` (data: an Error object) if the run fails on our side after the stream began. "
    "Errors before the run starts are JSON with their status, as without streaming. "
    "Closing the connection stops the run: it is charged for what it used.",
    "schema": {"type": "string"},
    "x-events": {
        "stdout": {
            "type": "object",
            "required": ["text"],
            "properties": {"text": {"type": "string"}},
        },
        "stderr": {
            "type": "object",
            "required": ["text"],
            "properties": {"text": {"type": "string"}},
        },
        "result": {"$ref": "#/components/schemas/RunResult"},
        "error": {"$ref": "#/components/schemas/Error"},
    },
}


def _common_errors() -> dict[str, Any]:
    """Errors any operation can answer (the body is always an ``Error``)."""
    return {
        "404": _error("No such endpoint"),
        "405": _error("Method not allowed on this path (see the Allow header)"),
        "500": _error("A bug of ours; the message quotes a request id to report"),
    }


def _ci_pattern(names: list[str]) -> str:
    """A pattern matching ``names`` in any case, with whitespace around (as the server does)."""
    spelled = [
        "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else c for c in name) for name in names
    ]
    # str.strip()'s whitespace: \s in Python and in Rust (schemathesis validates with
    # jsonschema_rs) is Unicode White_Space, which lacks U+001C..U+001F.
    space = r"[\s\x1c-\x1f]*"
    return "^" + space + "(?:" + "|".join(spelled) + ")" + space + "$"


def languages_schema() -> dict[str, Any]:
    """The body of ``GET /languages``, as ``api._health.languages_document`` builds it."""
    integer = {"type": "integer", "minimum": 0}
    return {
        "type": "object",
        "required": ["languages", "limits", "environment"],
        "properties": {
            "languages": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name", "aliases", "version", "runtime", "file", "packages"],
                    "properties": {
                        "name": {"type": "string", "enum": ["python", "javascript"]},
                        "aliases": {
                            "type": "array",
                            "items": {"type": "string"},
                            "description": "Other names accepted as language",
                        },
                        "version": {"type": "string", "description": "Empty when unknown"},
                        "runtime": {"type": "string", "description": "The runsc runtime"},
                        "file": {"type": "string", "description": "Where the code is saved"},
                        "packages": {
                            "type": "array",
                            "description": (
                                "Third-party packages installed in the sandbox, dependencies "
                                "included, with their exact versions (Python: import them; "
                                "JavaScript: require or import them)"
                            ),
                            "items": {
                                "type": "object",
                                "required": ["name", "version"],
                                "properties": {
                                    "name": {"type": "string"},
                                    "version": {"type": "string"},
                                },
                            },
                        },
                    },
                },
            },
            "limits": {
                "type": "object",
                "required": [
                    "timeoutSeconds",
                    "memoryBytes",
                    "outputBytes",
                    "codeBytes",
                    "stdinBytes",
                    "files",
                    "filesBytes",
                    "outFiles",
                    "outFilesBytes",
                    "tmpBytes",
                    "processes",
                    "network",
                ],
                "properties": {
                    "timeoutSeconds": {"type": "number", "exclusiveMinimum": 0},
                    "memoryBytes": integer,
                    "outputBytes": integer,
                    "codeBytes": integer,
                    "stdinBytes": integer,
                    "files": integer,
                    "filesBytes": integer,
                    "outFiles": integer,
                    "outFilesBytes": integer,
                    "tmpBytes": integer,
                    "processes": integer,
                    "network": {"type": "string", "enum": ["none"]},
                },
            },
            "environment": {
                "type": "object",
                "description": "What a program sees inside the sandbox (cwd, HOME, LANG, ...)",
                "additionalProperties": {"type": "string"},
            },
        },
    }


def _json_ok(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def openapi_document(config: Config) -> dict[str, Any]:
    run_result = {
        "type": "object",
        "required": ["stdout", "stderr", "exitCode", "timedOut", "durationMs"],
        "properties": {
            "stdout": {"type": "string"},
            "stderr": {"type": "string"},
            "exitCode": {
                "type": "integer",
                "description": "The program's exit status; 128+n for signal n; 137 when stopped "
                "by Cinch (timeout, output or credit limit, out of memory); -1 for a sandbox "
                "failure of ours.",
            },
            "timedOut": {"type": "boolean"},
            "durationMs": {"type": "integer", "minimum": 0},
            "termination": {
                "type": "string",
                "enum": [
                    "exited",
                    "signal",
                    "timeout",
                    "oom",
                    "output_limit",
                    "credit_limit",
                    "sandbox_error",
                    "cancelled",
                ],
                "description": "cancelled: a streaming client hung up, so the run was stopped "
                "(and charged for what it used).",
            },
            "signal": {"type": ["string", "null"]},
            "truncated": {"type": "boolean"},
            "queueMs": {"type": "integer", "minimum": 0},
            "creditsCharged": {"type": "integer", "minimum": 0},
            "language": {"type": "string", "enum": ["python", "javascript"]},
            "files": {
                "type": "array",
                "description": "Every regular file the program left under out/ in its working "
                "directory (read inside the sandbox; symlinks and special files are skipped), "
                f"sorted by path. At most {config.max_out_files} files and "
                f"{config.max_out_files_bytes} bytes in all carry their content; the next ones "
                "are listed with content null (and filesTruncated is true).",
                "items": {
                    "type": "object",
                    "required": ["path", "size", "mimeType", "content"],
                    "properties": {
                        "path": {"type": "string", "examples": ["out/chart.png"]},
                        "size": {"type": "integer", "minimum": 0},
                        "mimeType": {"type": "string", "examples": ["image/png"]},
                        "content": {
                            "type": ["string", "null"],
                            "contentEncoding": "base64",
                            "description": "null when the file did not fit the limits",
                        },
                    },
                },
            },
            "filesTruncated": {"type": "boolean"},
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Cinch",
            "version": "1.0.0",
            "description": "Run untrusted Python or JavaScript in a fresh gVisor sandbox.",
        },
        "servers": [{"url": config.base_url}],
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "cinch_live_..."}
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "description": "Every error the server answers, whatever its status",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "string",
                            "minLength": 1,
                            "description": "What went wrong and what to do, for a person",
                        }
                    },
                },
                "Languages": languages_schema(),
                "Health": {
                    "type": "object",
                    "required": ["status"],
                    "properties": {"status": {"type": "string", "enum": ["ok"]}},
                },
                "Readiness": {
                    "type": "object",
                    "required": ["status", "checks"],
                    "properties": {
                        "status": {"type": "string", "enum": ["ok", "unavailable"]},
                        "checks": {
                            "type": "object",
                            "description": "One entry per check (database, engine, pool:...)",
                            "additionalProperties": {
                                "type": "object",
                                "required": ["ok"],
                                "properties": {"ok": {"type": "boolean"}},
                            },
                        },
                    },
                },
                "RunRequest": {
                    "type": "object",
                    "required": ["code"],
                    "properties": {
                        "code": {
                            "type": "string",
                            "minLength": 1,
                            "description": f"At most {config.max_code_bytes} bytes (UTF-8).",
                        },
                        "language": {
                            "type": "string",
                            "default": "python",
                            # Exactly what the server takes: a name in any case, with
                            # whitespace around (an enum would call "Python" invalid).
                            "pattern": _ci_pattern(list(LANGUAGE_ALIASES)),
                            "examples": ["python", "javascript"],
                            "description": "python or javascript; also "
                            + ", ".join(n for n in LANGUAGE_ALIASES if n not in LANGUAGES)
                            + ". Case-insensitive, surrounding whitespace ignored.",
                        },
                        "stdin": {
                            "type": ["string", "null"],
                            "description": f"At most {config.max_stdin_bytes} bytes.",
                        },
                        "files": {
                            "type": ["array", "null"],
                            "description": f"At most {config.max_files} files (413 above). Written under the working directory before the "
                            "program starts. Relative paths without .. or empty segments, NUL "
                            "or a leading /, at most 255 bytes, not under out/ and not the "
                            f"program's own file; at most {config.max_files_bytes} bytes in "
                            "all, decoded (413 above).",
                            "items": {
                                "type": "object",
                                "required": ["path", "content"],
                                "properties": {
                                    "path": {"type": "string", "examples": ["data.csv"]},
                                    "content": {"type": "string"},
                                    "encoding": {
                                        "type": "string",
                                        "enum": ["utf-8", "base64"],
                                        "default": "utf-8",
                                    },
                                },
                            },
                        },
                        "args": {
                            "type": ["array", "null"],
                            "items": {"type": "string", "description": "At most 4096 bytes"},
                            "description": "At most 64 (413 above). sys.argv[1:] in Python, process.argv.slice(2) in "
                            "JavaScript.",
                        },
                        "env": {
                            "type": ["object", "null"],
                            "propertyNames": {"pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
                            "additionalProperties": {"type": "string"},
                            "description": "Extra environment variables: at most 64, 64 KiB in all (413 "
                            "above). "
                            "Reserved (400): PATH, HOME, LANG, LANGUAGE, PWD, LC_*, PYTHON*, "
                            "NODE_*, LD_*, MPL*, CINCH_*.",
                        },
                        "timeoutMs": {
                            "type": ["integer", "null"],
                            "minimum": 1,
                            "maximum": round(config.run_timeout_s * 1000),
                            "description": "Lowers this run's time limit (never raises it).",
                        },
                        "maxCredits": {
                            "type": ["integer", "null"],
                            "minimum": 1,
                            "maximum": 10**12,
                            "description": "Stop the run (termination credit_limit) when it "
                            "would cost more; it is charged at most this.",
                        },
                    },
                },
                "RunResult": run_result,
            },
        },
        "paths": {
            "/run": {
                "post": {
                    "operationId": "run",
                    "summary": "Run code in a fresh sandbox",
                    "security": [{"bearer": []}],
                    "parameters": [
                        {
                            "name": "Idempotency-Key",
                            "in": "header",
                            "required": False,
                            "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                        }
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/RunRequest"}
                            }
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "The program ran (whatever its exit code)",
                            "headers": {
                                "X-Request-Id": {"schema": {"type": "string"}},
                                "X-Credits-Remaining": {"schema": {"type": "string"}},
                                "Server-Timing": {
                                    "description": "Milliseconds spent reading the request, "
                                    "authorizing, running and settling",
                                    "schema": {"type": "string"},
                                },
                                **RATE_LIMIT_HEADERS,
                            },
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/RunResult"}
                                },
                                "text/event-stream": _EVENT_STREAM,
                            },
                        },
                        "400": _error(
                            "The body is not valid (the message says what is wrong; for a "
                            "bad language it lists every accepted name)"
                        ),
                        "401": _error(
                            "Missing, unknown or revoked API key",
                            extra_headers={
                                "WWW-Authenticate": {
                                    "description": 'Always Bearer realm="cinch"',
                                    "schema": {"type": "string", "pattern": "^Bearer"},
                                }
                            },
                        ),
                        "402": _error("Out of credits"),
                        "409": _error(
                            "Idempotency-Key reused with another body, or its first "
                            "request is still running"
                        ),
                        "413": _error(
                            "Code, stdin, files, args or env (or the whole body) over a limit"
                        ),
                        "429": _error(
                            "Rate limited: too many requests or runs at once for this key, "
                            "or too many invalid keys from this address",
                            retry=True,
                        ),
                        "503": _error(
                            "No sandbox available right now, or the credits database is "
                            "unavailable",
                            retry=True,
                        ),
                        **_common_errors(),
                    },
                }
            },
            "/languages": {
                "get": {
                    "operationId": "getLanguages",
                    "summary": "Runtimes, limits and the sandbox environment",
                    "responses": {
                        "200": _json_ok("OK", {"$ref": "#/components/schemas/Languages"}),
                        **_common_errors(),
                    },
                }
            },
            "/healthz": {
                "get": {
                    "operationId": "getHealth",
                    "summary": "Liveness",
                    "responses": {
                        "200": _json_ok("OK", {"$ref": "#/components/schemas/Health"}),
                        **_common_errors(),
                    },
                }
            },
            "/readyz": {
                "get": {
                    "operationId": "getReadiness",
                    "summary": "Readiness: database, engine, pools",
                    "responses": {
                        "200": _json_ok("Ready", {"$ref": "#/components/schemas/Readiness"}),
                        "503": _json_ok("Not ready", {"$ref": "#/components/schemas/Readiness"}),
                        **_common_errors(),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "getMetrics",
                    "summary": "Prometheus metrics",
                    "responses": {
                        "200": {
                            "description": "OK",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                        **_common_errors(),
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "getOpenApi",
                    "summary": "This document",
                    "responses": {
                        "200": _json_ok("OK", {"type": "object"}),
                        **_common_errors(),
                    },
                }
            },
        },
    }
