"""Health, readiness, languages, metrics and the OpenAPI document."""

from __future__ import annotations

from typing import Any

from quart import Blueprint, Response, current_app

from pool import installed_packages

from ._openapi import openapi_document
from ._runs import json_response
from ._state import app_state

bp = Blueprint("health", __name__)


@bp.get("/healthz")
async def healthz() -> Response:
    return json_response({"status": "ok"})


@bp.get("/readyz")
async def readyz() -> Response:
    check = app_state().readiness
    if check is None:
        return json_response({"status": "ok", "checks": {}})
    checks = await check()
    ok = all(c.get("ok") for c in checks.values())
    return json_response(
        {"status": "ok" if ok else "unavailable", "checks": checks}, 200 if ok else 503
    )


def languages_document(config: Any, info: dict[str, Any]) -> dict[str, Any]:
    """The body of ``GET /languages``; the dashboard's /docs page shows the same facts.

    ``packages`` come from the repository's lock files, so an instance without an
    engine (``cinch api``) lists them too.
    """
    return {
        "languages": [
            {
                "name": name,
                "aliases": aliases,
                "version": info.get(name, {}).get("version", ""),
                "runtime": info.get(name, {}).get("runtime", ""),
                "file": info.get(name, {}).get("file", ""),
                "packages": [
                    {"name": p.name, "version": p.version} for p in installed_packages(name)
                ],
            }
            for name, aliases in (
                ("python", ["python3", "py"]),
                ("javascript", ["js", "node", "nodejs"]),
            )
        ],
        "limits": {
            "timeoutSeconds": config.run_timeout_s,
            "memoryBytes": 256 * 1024 * 1024,
            "outputBytes": config.output_limit_bytes,
            "codeBytes": config.max_code_bytes,
            "stdinBytes": config.max_stdin_bytes,
            "files": config.max_files,
            "filesBytes": config.max_files_bytes,
            "outFiles": config.max_out_files,
            "outFilesBytes": config.max_out_files_bytes,
            "tmpBytes": 64 * 1024 * 1024,
            "processes": 128,
            "network": "none",
        },
        "environment": {
            "cwd": "/tmp/work",
            "HOME": "/tmp/work",
            "LANG": "C.UTF-8",
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "user": "uid 1000, no capabilities",
            "filesystem": "read-only root; writable /tmp (64 MB) and /dev/shm (16 MB)",
            "isolation": "gVisor (runsc), a fresh sandbox per run, destroyed afterwards",
        },
    }


@bp.get("/languages")
async def languages() -> Response:
    return json_response(
        languages_document(current_app.config["CINCH"], app_state().languages_info)
    )


@bp.get("/metrics")
async def metrics() -> Response:
    body = app_state().metrics.render()
    return Response(body, content_type="text/plain; version=0.0.4; charset=utf-8")


@bp.get("/openapi.json")
async def openapi() -> Response:
    return json_response(openapi_document(current_app.config["CINCH"]))
