"""OpenAPI 3.1 description of the public API, matching what the server does."""

from __future__ import annotations

from typing import Any

from ._config import Config
from ._runs import LANGUAGE_ALIASES


def _error(description: str, retry: bool = False) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    if retry:
        response["headers"] = {
            "Retry-After": {"schema": {"type": "string"}, "description": "Seconds to wait"}
        }
    return response


# OpenAPI 3.1 has no schema for a sequence of events: the stream is described in
# words, and each event's data in the 3.2 style (itemSchema) as an extension.
_EVENT_STREAM: dict[str, Any] = {
    "description": "Sent when the request has `Accept: text/event-stream`. Server-sent events "
    "as the program runs: `stdout` and `stderr` (data `{\"text\": ...}`, in the order written, "
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
                    "required": ["error"],
                    "properties": {"error": {"type": "string"}},
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
                            # The server also takes these in any case, with spaces around.
                            "enum": sorted(LANGUAGE_ALIASES),
                            "description": "python or javascript; aliases python3, py, js, "
                            "node, nodejs (case-insensitive)",
                        },
                        "stdin": {
                            "type": ["string", "null"],
                            "description": f"At most {config.max_stdin_bytes} bytes.",
                        },
                    },
                },
                "RunResult": run_result,
            },
        },
        "paths": {
            "/run": {
                "post": {
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
                            },
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/RunResult"}
                                },
                                "text/event-stream": _EVENT_STREAM,
                            },
                        },
                        "400": _error("The body is not valid"),
                        "401": _error("Missing, unknown or revoked API key"),
                        "402": _error("Out of credits"),
                        "409": _error("Idempotency-Key reused with another body"),
                        "413": _error("Code or stdin too large"),
                        "429": _error("Rate limited", retry=True),
                        "503": _error("No capacity right now", retry=True),
                    },
                }
            },
            "/languages": {
                "get": {
                    "summary": "Runtimes, limits and the sandbox environment",
                    "responses": {
                        "200": {
                            "description": "OK",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
            "/healthz": {
                "get": {
                    "summary": "Liveness",
                    "responses": {
                        "200": {
                            "description": "OK",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
            "/readyz": {
                "get": {
                    "summary": "Readiness: database, engine, pools",
                    "responses": {
                        "200": {
                            "description": "Ready",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        },
                        "503": {
                            "description": "Not ready",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        },
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {
                        "200": {
                            "description": "OK",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
        },
    }
