"""``cinch doctor``: every prerequisite and the configured server, OK / FAIL / SKIP, with the fix."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Awaitable, Callable

import httpx
import trio
import trio_asyncio

from pool import DockerBackend, DockerClient, Exited, Output, PoolError, socket_path_from_env
from pool._images import current_tags
from pool._setup import RUNSC_MIN_DATE, RUNTIMES, _runsc_date, find_runsc, read_cgroup_weight

from ._config import Config

Check = Callable[[], Awaitable[tuple[str, str]]]

# A line of the report stays readable in an 100-column terminal.
DETAIL_MAX = 90
SERVER_TIMEOUT_S = 3.0


def _short(text: str) -> str:
    """The first line of ``text``, cut to :data:`DETAIL_MAX` characters."""
    lines = text.strip().splitlines() or [""]
    line = lines[0] + (" ..." if len(lines) > 1 else "")
    if len(line) <= DETAIL_MAX:
        return line
    head, sep, fix = line.partition("; fix: ")  # the fix is the part worth keeping
    room = max(DETAIL_MAX - len(sep) - len(fix) - 3, 20)
    return head[:room] + "..." + sep + fix


def _describe(exc: BaseException) -> str:
    """What went wrong, from the innermost errors of Trio's exception groups."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(e) for e in exc.exceptions)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def _run_in_sandbox(
    client: DockerClient,
    config: Config,
    language: str,
    code: str,
    *,
    preimport: bool = True,
) -> str:
    backend = DockerBackend(
        client,
        owner="cinch-doctor",
        runtimes=config.runtimes(),
        env=config.sandbox_env() if preimport else None,
    )
    sandbox = await backend.start_sandbox(language, current_tags()[language])
    try:
        await sandbox.send_run(code.encode(), b"", b"\0" * 16, 1 << 20)
        out = b""
        with trio.fail_after(15):
            while True:
                event = await sandbox.receive_event()
                if isinstance(event, Output):
                    out += event.data
                    continue
                if isinstance(event, Exited) and event.code not in (0, None):
                    raise PoolError(f"exit {event.code}: {out.decode(errors='replace')[-300:]}")
                break
        return out.decode(errors="replace")
    finally:
        await backend.destroy(sandbox)


async def run_doctor(config: Config) -> int:
    client = DockerClient(socket_path_from_env(), timeout_s=10)
    results: list[tuple[str, str, str]] = []
    engine_ok = False
    images_ok = False

    async def check(name: str, fn: Check) -> bool:
        try:
            status, detail = await fn()
        except Exception as exc:  # a doctor reports every failure, whatever its type
            status, detail = "FAIL", _describe(exc)
        results.append((status, name, detail))
        print(f"{status:<5} {name}: {_short(detail)}", flush=True)
        return status == "OK"

    async def runsc() -> tuple[str, str]:
        path = find_runsc()
        if not path:
            return "FAIL", "runsc is not installed; fix: cinch setup"
        date = _runsc_date(path)
        if date < RUNSC_MIN_DATE:
            return "FAIL", f"{path} is the {date} build (breaks `ls`); fix: cinch setup"
        return "OK", f"{path} ({date})"

    async def engine() -> tuple[str, str]:
        try:
            version = await client.version()
        except PoolError as exc:
            return "FAIL", f"{exc}; fix: cinch setup"
        return "OK", f"dockerd {version.get('Version')} at {client.socket_path}"

    async def runtimes() -> tuple[str, str]:
        have = set((await client.info()).get("Runtimes", {}))
        missing = [r for r in RUNTIMES if r not in have]
        wanted = set(config.runtimes().values())
        if missing:
            return "FAIL", f"missing {', '.join(missing)}; fix: cinch setup"
        if not wanted <= have:
            return "FAIL", f"configured runtimes {sorted(wanted)} are not registered"
        return "OK", ", ".join(sorted(RUNTIMES))

    async def cgroup() -> tuple[str, str]:
        weight = read_cgroup_weight()
        if weight is None:
            return "FAIL", "the sandbox cgroup is missing; fix: cinch setup"
        return "OK", f"cinch-sandboxes CPU weight {weight}"

    async def images() -> tuple[str, str]:
        missing = [tag for tag in current_tags().values() if not await client.image_exists(tag)]
        if missing:
            return "FAIL", f"missing or outdated: {', '.join(missing)}; fix: cinch images build"
        return "OK", ", ".join(current_tags().values())

    async def preimports() -> tuple[str, str]:
        # In a sandbox without them: a module that fails to import would fail every
        # Python sandbox's warm-up, and the start failure alone does not say which.
        names = config.python_preimports()
        out = await _run_in_sandbox(
            client,
            config,
            "python",
            "import importlib, json, time\nbad = {}\nt0 = time.perf_counter()\n"
            f"for name in {list(names)!r}:\n"
            "    try:\n        importlib.import_module(name)\n"
            "    except Exception as exc:\n        bad[name] = f'{type(exc).__name__}: {exc}'\n"
            "print(json.dumps({'bad': bad, 'ms': round((time.perf_counter() - t0) * 1000)}))",
            preimport=False,
        )
        found = json.loads(out.strip().splitlines()[-1])
        if found["bad"]:
            why = "; ".join(f"{k}: {v}" for k, v in found["bad"].items())
            return "FAIL", f"{why}; fix: correct CINCH_PYTHON_PREIMPORT"
        return "OK", f"{', '.join(names)} import in {found['ms']} ms (paid by every warm sandbox)"

    async def sandbox_starts() -> tuple[str, str]:
        out = await _run_in_sandbox(
            client, config, "python", "import os; print(os.uname().release)"
        )
        return "OK", f"python sandbox started (kernel {out.strip()})"

    async def ls_works() -> tuple[str, str]:
        out = await _run_in_sandbox(
            client,
            config,
            "python",
            "import subprocess; print(subprocess.run(['ls', '/'], capture_output=True, "
            "text=True, check=True).stdout.split())",
        )
        return "OK", f"ls / inside a sandbox: {out.strip()[:80]}"

    async def node_works() -> tuple[str, str]:
        out = await _run_in_sandbox(
            client,
            config,
            "javascript",
            'import fs from "node:fs"; console.log(process.version, typeof fs.readFileSync)',
        )
        return "OK", f"node sandbox: {out.strip()}"

    async def database() -> tuple[str, str]:
        from ._store import Store

        async with trio_asyncio.open_loop():
            store = await Store.open(config.database_url, config.data_dir, "doctor")
            try:
                version = await store.fetchval("SHOW server_version")
                mismatches = await store.ledger_mismatches()
            finally:
                await store.aclose()
        where = "embedded" if not config.database_url else "CINCH_DATABASE_URL"
        if mismatches:
            return "FAIL", f"{len(mismatches)} account(s) whose balance != sum of ledger"
        return "OK", f"PostgreSQL {version}, {where}, ledger balanced"

    async def leftovers() -> tuple[str, str]:
        from ._leftovers import survey

        owners = await survey(client)
        dead = [o for o in owners if o.status == "dead"]
        unknown = [o for o in owners if o.status == "unknown"]
        if dead:
            n = sum(len(o.containers) for o in dead)
            ids = ", ".join(o.id for o in dead)
            return "FAIL", f"{n} sandbox(es) of dead instance(s) {ids}; run: cinch cleanup"
        alive = len(owners) - len(unknown)
        more = f"; {len(unknown)} of unknown owner(s), kept" if unknown else ""
        return "OK", f"no sandboxes of dead instances ({alive} other live instance(s){more})"

    async def server() -> tuple[str, str]:
        url = f"{config.base_url}/healthz"
        t0 = time.monotonic()
        try:
            async with httpx.AsyncClient(timeout=SERVER_TIMEOUT_S) as http:
                response = await http.get(url)
        except httpx.TimeoutException:
            return "FAIL", f"{url} did not answer within {SERVER_TIMEOUT_S:g} s"
        except httpx.HTTPError:
            return "FAIL", f"nothing answers at {url}; start it: cinch serve"
        if response.status_code != 200:
            return "FAIL", f"{url} answered HTTP {response.status_code}"
        return "OK", f"{url} answered in {(time.monotonic() - t0) * 1000:.0f} ms"

    try:
        await check("runsc", runsc)
        engine_ok = await check("engine reachable", engine)
        if engine_ok:
            await check("runtime registered", runtimes)
            await check("sandbox cgroup", cgroup)
            images_ok = await check("images present and current", images)
        if engine_ok and images_ok:
            if config.python_preimports():
                await check("CINCH_PYTHON_PREIMPORT", preimports)
            await check("a sandbox starts", sandbox_starts)
            await check("ls / works inside", ls_works)
            await check("node 20 with ES modules", node_works)
        if engine_ok:
            await check("no sandboxes of dead instances", leftovers)
        else:
            for name in ("a sandbox starts", "ls / works inside", "node 20 with ES modules"):
                results.append(("SKIP", name, "needs the engine and images"))
                print(f"SKIP  {name}: needs the engine and images", flush=True)
        if os.environ.get("CINCH_DOCTOR_SKIP_DB"):
            print("SKIP  database: CINCH_DOCTOR_SKIP_DB is set", flush=True)
        else:
            await check("database", database)
        await check("server answers", server)
    finally:
        await client.aclose()
    failed = [r for r in results if r[0] == "FAIL"]
    print(f"{len(results) - len(failed)} ok or skipped, {len(failed)} failed", flush=True)
    return 1 if failed else 0
