"""The agent protocol's data on the wire: run requests, results and pool levels.

Shared by the agent (``_agent``) and its client (``_remote``), so the two ends
cannot disagree.  ``RunRequest`` and ``RunResult`` cross as JSON objects of
their own fields, by name: a field added to either dataclass travels without a
change here (as long as its value is plain JSON).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from scheduler import InputFile, OutputFile, RunRequest, RunResult, Termination

# The agent's pool levels, piggy-backed on every answer of ``POST /v1/runs``.
LEVELS_HEADER = "X-Cinch-Pool"
RUNS_PATH = "/v1/runs"
POOL_PATH = "/v1/pool"
NDJSON = "application/x-ndjson"


class WireError(ValueError):
    """A message from the other end does not have the shape of the protocol."""


@dataclass(frozen=True)
class LanguageLevels:
    """One language's pool on one agent, as the agent saw it."""

    warm: int = 0
    starting: int = 0
    capacity: int = 0
    minimum: int = 0  # the fewest warm sandboxes the pool keeps
    in_flight: int = 0
    queued: int = 0
    predicted_wait_s: float = 0.0


@dataclass(frozen=True)
class Levels:
    """What ``GET /v1/pool`` answers (and the ``X-Cinch-Pool`` header carries).

    ``epoch`` changes each time the agent process starts: a router that sees a
    new epoch knows the agent restarted.
    """

    epoch: str
    draining: bool
    languages: dict[str, LanguageLevels] = field(default_factory=dict)
    runs_total: int = 0  # runs this agent finished since it started
    # The longest predicted wait the agent queues a run for (0: not told).
    admit_budget_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "draining": self.draining,
            "runsTotal": self.runs_total,
            "admitBudgetS": self.admit_budget_s,
            "languages": {
                name: {
                    "warm": lv.warm,
                    "starting": lv.starting,
                    "capacity": lv.capacity,
                    "min": lv.minimum,
                    "inFlight": lv.in_flight,
                    "queued": lv.queued,
                    "predictedWaitS": lv.predicted_wait_s,
                }
                for name, lv in self.languages.items()
            },
        }

    def header(self) -> str:
        return json.dumps(self.to_json(), separators=(",", ":"))

    @classmethod
    def from_json(cls, body: Any) -> Levels:
        try:
            return cls(
                epoch=str(body["epoch"]),
                draining=bool(body["draining"]),
                languages={
                    str(name): LanguageLevels(
                        warm=int(lv["warm"]),
                        starting=int(lv["starting"]),
                        capacity=int(lv["capacity"]),
                        minimum=int(lv.get("min", 0)),
                        in_flight=int(lv["inFlight"]),
                        queued=int(lv["queued"]),
                        predicted_wait_s=float(lv["predictedWaitS"]),
                    )
                    for name, lv in dict(body["languages"]).items()
                },
                runs_total=int(body.get("runsTotal", 0)),
                admit_budget_s=float(body.get("admitBudgetS", 0.0)),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise WireError(f"bad pool levels: {exc!r}") from exc

    @classmethod
    def from_header(cls, value: str | None) -> Levels | None:
        if not value:
            return None
        try:
            return cls.from_json(json.loads(value))
        except (ValueError, WireError):
            return None


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


def _unb64(text: Any) -> bytes | None:
    if text is None:
        return None
    if not isinstance(text, str):
        raise WireError("file content must be base64 text")
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, binascii.Error) as exc:
        raise WireError(f"bad file content: {exc}") from exc


def request_to_json(request: RunRequest) -> dict[str, Any]:
    body = asdict(request)
    # Bytes cross as base64; the rest is plain JSON already.
    body["files"] = [{"path": f.path, "content": _b64(f.content)} for f in request.files]
    return body


def request_from_json(body: Any) -> RunRequest:
    if not isinstance(body, dict):
        raise WireError("the request must be a JSON object")
    names = {f.name for f in fields(RunRequest)}
    unknown = set(body) - names
    if unknown:
        # A newer API than this agent: refuse rather than drop a field silently.
        raise WireError(f"unknown request fields: {', '.join(sorted(unknown))}")
    try:
        values = dict(body)
        values["files"] = tuple(
            InputFile(str(f["path"]), _unb64(f["content"]) or b"") for f in body.get("files", ())
        )
        values["args"] = tuple(str(a) for a in body.get("args", ()))
        values["env"] = tuple((str(k), str(v)) for k, v in body.get("env", ()))
        return RunRequest(**values)
    except (TypeError, KeyError, ValueError) as exc:
        raise WireError(f"bad request: {exc!r}") from exc


def result_to_json(result: RunResult) -> dict[str, Any]:
    body = asdict(result)
    body["termination"] = result.termination.value
    body["files"] = [
        {"path": f.path, "size": f.size, "content": _b64(f.content)} for f in result.files
    ]
    return body


def result_from_json(body: Any) -> RunResult:
    if not isinstance(body, dict):
        raise WireError("the result must be a JSON object")
    names = {f.name for f in fields(RunResult)}
    try:
        values = {k: v for k, v in body.items() if k in names}
        values["termination"] = Termination(values["termination"])
        values["files"] = tuple(
            OutputFile(str(f["path"]), int(f["size"]), _unb64(f["content"]))
            for f in body.get("files", ())
        )
        return RunResult(**values)
    except (KeyError, TypeError, ValueError) as exc:
        raise WireError(f"bad result: {exc!r}") from exc


def encode_line(obj: dict[str, Any]) -> bytes:
    """One NDJSON line (JSON never holds a raw newline)."""
    try:
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"
    except UnicodeEncodeError:  # a lone surrogate: escape it instead
        return json.dumps(obj, separators=(",", ":")).encode("ascii") + b"\n"
