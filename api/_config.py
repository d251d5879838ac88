"""Configuration: one frozen dataclass, read once from ``CINCH_*`` variables."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit


class ConfigError(ValueError):
    """A ``CINCH_*`` variable has a value we cannot use; the message names it."""


@dataclass(frozen=True)
class Config:
    """Every setting of a Cinch instance. Each field ``x`` is read from ``CINCH_X``."""

    data_dir: Path = Path("/var/lib/cinch")
    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str = ""
    database_url: str = ""
    log_level: str = "INFO"
    # sandboxes and pools
    # Warm targets follow demand between the minimum (CINCH_POOL_*) and the
    # maximum (CINCH_POOL_MAX_*, also bounded by memory and CINCH_MAX_SANDBOXES).
    pool_python: int = 2
    pool_javascript: int = 2
    pool_max_python: int = 8
    pool_max_javascript: int = 8
    max_sandboxes: int = 24
    start_concurrency: int = 0  # 0: one per CPU core
    cpu_weights: bool = True
    # The sandboxes' cgroup parent; empty: the low-weight group `cinch setup` made.
    cgroup_parent: str = ""
    sandbox_cpus: float = 1.0  # each sandbox's CPU limit, in cores
    pause_idle: bool = False
    sandbox_max_age_s: float = 600.0
    refill_delay_s: float = 0.5
    runtime_python: str = "runsc-ptrace"
    runtime_javascript: str = "runsc-ptrace"
    queue_timeout_s: float = 20.0
    queue_max: int = 256
    run_timeout_s: float = 10.0
    output_limit_bytes: int = 1024 * 1024
    # Modules every warm Python sandbox imports before it is ready, comma-separated
    # (numpy,pandas): runs that use them skip the import; every life pays for it.
    python_preimport: str = ""
    # the API
    max_code_bytes: int = 512 * 1024
    max_stdin_bytes: int = 1024 * 1024
    # Files a run may send in ("files"), and bring back from out/ with their content.
    max_files: int = 64
    max_files_bytes: int = 10 * 1024 * 1024
    max_out_files: int = 32
    max_out_files_bytes: int = 5 * 1024 * 1024
    rate_limit_rps: float = 50.0
    rate_limit_burst: int = 100
    max_concurrent_per_key: int = 32
    # Failed authentications per client address: a burst, then a steady rate.
    auth_failures_burst: int = 20
    auth_failures_per_s: float = 1.0
    idempotency_ttl_s: int = 24 * 3600
    signup_credits: int = 10_000
    signups_per_ip_per_hour: int = 5
    shutdown_grace_s: float = 12.0
    # slow and odd clients (api/_http_limits.py)
    header_timeout_s: float = 5.0
    max_connections_per_ip: int = 256
    # dashboard and payments
    payments: str = "none"  # none | dev | stripe
    credits_per_usd: int = 10_000
    topup_min_usd: int = 5
    topup_max_usd: int = 500
    stripe_secret_key: str = ""
    stripe_webhook_secret: str = ""
    secure_cookies: str = "auto"  # auto | on | off
    session_secret: str = ""
    # Who users ask for credits when CINCH_PAYMENTS=none (an e-mail address, a URL, a team).
    credits_contact: str = "the operator of this server"
    # The head of each run's stdout and stderr kept for the dashboard's run page; 0: none.
    kept_output_bytes: int = 16384
    # many hosts (SCALE-OUT.md): `cinch api` routes to `cinch agent`s
    agents: str = ""  # static members: host:port[,host:port...]
    agents_dns: str = ""  # or a DNS name:port resolved every 2 s (tasks.cinch-agent:8081)
    agent_token: str = ""  # shared by the API tier and the agents
    agent_poll_s: float = 0.25

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Config:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            name = "CINCH_" + f.name.upper()
            if f.name in overrides:
                values[f.name] = overrides[f.name]
                continue
            raw = env.get(name)
            if raw is None or raw == "":
                continue
            kind: type[Any] = type(cast(Any, f.default))
            try:
                if kind is bool:
                    if raw.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                        raise ValueError(raw)
                    values[f.name] = raw.lower() in ("1", "true", "yes", "on")
                elif kind is int:
                    values[f.name] = int(raw)
                elif kind is float:
                    values[f.name] = float(raw)
                elif kind is str:
                    values[f.name] = raw
                else:
                    values[f.name] = Path(raw)
            except ValueError:
                raise ConfigError(f"{name}={raw!r} is not a valid {kind.__name__}") from None
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        def check(ok: bool, what: str) -> None:
            if not ok:
                raise ConfigError(what)

        check(self.pool_python >= 0 and self.pool_javascript >= 0, "CINCH_POOL_* must be >= 0")
        check(self.max_sandboxes >= 1, "CINCH_MAX_SANDBOXES must be >= 1")
        check(0.01 <= self.sandbox_cpus <= 64, "CINCH_SANDBOX_CPUS must be from 0.01 to 64")
        check(self.start_concurrency >= 0, "CINCH_START_CONCURRENCY must be >= 0")
        check(
            self.pool_max_python >= 0 and self.pool_max_javascript >= 0,
            "CINCH_POOL_MAX_* must be >= 0",
        )
        check(0 < self.run_timeout_s <= 300, "CINCH_RUN_TIMEOUT_S must be in (0, 300]")
        check(self.queue_timeout_s >= 0, "CINCH_QUEUE_TIMEOUT_S must be >= 0")
        check(self.queue_max >= 0, "CINCH_QUEUE_MAX must be >= 0")
        check(
            self.rate_limit_rps > 0 and self.rate_limit_burst >= 1, "CINCH_RATE_LIMIT_* must be > 0"
        )
        check(
            self.auth_failures_burst >= 1 and self.auth_failures_per_s > 0,
            "CINCH_AUTH_FAILURES_* must be > 0",
        )
        check(self.max_concurrent_per_key >= 1, "CINCH_MAX_CONCURRENT_PER_KEY must be >= 1")
        check(
            self.payments in ("none", "dev", "stripe"), "CINCH_PAYMENTS must be none, dev or stripe"
        )
        check(
            self.payments != "stripe"
            or bool(self.stripe_secret_key and self.stripe_webhook_secret),
            "CINCH_PAYMENTS=stripe needs CINCH_STRIPE_SECRET_KEY and CINCH_STRIPE_WEBHOOK_SECRET",
        )
        check(1 <= self.topup_min_usd <= self.topup_max_usd, "CINCH_TOPUP_MIN/MAX_USD out of order")
        check(self.secure_cookies in ("auto", "on", "off"), "CINCH_SECURE_COOKIES: auto, on or off")
        check(self.port >= 0, "CINCH_PORT must be >= 0")
        check(self.header_timeout_s > 0, "CINCH_HEADER_TIMEOUT_S must be > 0")
        check(self.max_connections_per_ip >= 1, "CINCH_MAX_CONNECTIONS_PER_IP must be >= 1")
        check(0 <= self.kept_output_bytes <= 1 << 20, "CINCH_KEPT_OUTPUT_BYTES: 0 to 1048576")
        check(0.05 <= self.agent_poll_s <= 5, "CINCH_AGENT_POLL_S must be in [0.05, 5]")
        check(0 <= self.max_files <= 4096, "CINCH_MAX_FILES: 0 to 4096")
        # The sandbox's supervisor reads a run (code, stdin, files) of at most 80 MiB,
        # and an output file of at most 64 MiB; /tmp holds 64 MB.
        check(0 <= self.max_files_bytes <= 48 << 20, "CINCH_MAX_FILES_BYTES: 0 to 50331648")
        check(0 <= self.max_out_files <= 4096, "CINCH_MAX_OUT_FILES: 0 to 4096")
        check(0 <= self.max_out_files_bytes <= 48 << 20, "CINCH_MAX_OUT_FILES_BYTES: 0 to 50331648")
        bad = [name for name in self.python_preimport.split(",") if not _MODULE.match(name.strip())]
        check(
            not self.python_preimport.strip() or not bad,
            f"CINCH_PYTHON_PREIMPORT: {', '.join(repr(b) for b in bad)} is not a module name "
            "(comma-separated names like numpy,pandas,matplotlib.pyplot)",
        )

    @property
    def base_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    def pool_sizes(self) -> dict[str, int]:
        return {"python": self.pool_python, "javascript": self.pool_javascript}

    def pool_max_sizes(self) -> dict[str, int]:
        """Each pool's maximum: at least its minimum; at most the global cap and what
        this host's memory holds (three quarters of RAM over the sandbox limit)."""
        bound = min(self.max_sandboxes, memory_bound())
        return {
            name: max(low, min(high, bound))
            for (name, low), high in zip(
                self.pool_sizes().items(),
                (self.pool_max_python, self.pool_max_javascript),
                strict=True,
            )
        }

    def start_slots(self) -> int:
        """Sandbox starts at once: CINCH_START_CONCURRENCY, or one per core if 0."""
        return self.start_concurrency or max(1, len(os.sched_getaffinity(0)))

    def runtimes(self) -> dict[str, str]:
        return {"python": self.runtime_python, "javascript": self.runtime_javascript}

    def python_preimports(self) -> tuple[str, ...]:
        """CINCH_PYTHON_PREIMPORT as a tuple of module names (empty when unset)."""
        return tuple(n.strip() for n in self.python_preimport.split(",") if n.strip())

    def sandbox_env(self) -> dict[str, dict[str, str]]:
        """More environment for each language's runner: ``{language: {name: value}}``."""
        env: dict[str, dict[str, str]] = {}
        if self.python_preimports():
            env["python"] = {"CINCH_PREIMPORT": ",".join(self.python_preimports())}
        return env


SANDBOX_MEMORY_BYTES = 256 * 1024 * 1024
# A dotted Python module name (ASCII: what an operator would configure).
_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def memory_bound(meminfo: str = "/proc/meminfo") -> int:
    """How many sandboxes three quarters of this host's RAM holds at their limit."""
    try:
        with open(meminfo) as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    total = int(line.split()[1]) * 1024
                    return max(1, total * 3 // 4 // SANDBOX_MEMORY_BYTES)
    except (OSError, ValueError, IndexError):
        pass
    return 1_000_000  # unknown: the global cap decides


def describe() -> list[tuple[str, str, str]]:
    """``(variable, default, type)`` for every setting, for README and ``cinch config``."""
    return [
        ("CINCH_" + f.name.upper(), str(f.default), type(f.default).__name__)
        for f in fields(Config)
    ]


# Names of settings whose whole value is a secret (a Stripe key, a webhook
# signing secret, the session secret, and whatever such settings come later).
_SECRET_NAME = re.compile(r"SECRET|PASSWORD|TOKEN|_KEY$")
HIDDEN = "(set, hidden)"


def redact(name: str, value: str) -> str:
    """``value`` of the variable ``name`` as it may be shown on a screen or in a log.

    Secrets become ``(set, hidden)``; a URL keeps everything but its password
    (also a ``password=`` query parameter, which libpq accepts too).
    """
    if not value:
        return value
    if _SECRET_NAME.search(name):
        return HIDDEN
    if name.endswith("_URL"):
        return redact_url(value)
    return value


def redact_url(url: str) -> str:
    """``url`` with its password, if any, replaced by ``***``."""
    if "://" not in url:  # a libpq "key=value" string
        return re.sub(r"(?i)\bpassword\s*=\s*('[^']*'|\S+)", "password=***", url)
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # not a URL we can parse: show none of it
        return HIDDEN
    netloc = parts.netloc
    if password is not None:
        userinfo, _, host = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{host}"
    query = re.sub(r"(?i)(^|&)(password)=[^&]*", r"\1\2=***", parts.query)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
