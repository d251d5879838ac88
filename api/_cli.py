"""The ``cinch`` command: set up, check, serve and administer a Cinch instance.

Every failure the person at the terminal can fix (an unknown e-mail or key, a
bad argument or setting, a database or engine that cannot be reached) is one
line on stderr and exit status 1; a traceback means a bug.
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

import trio

from ._config import Config, ConfigError, describe, redact, redact_url
from ._errors import CommandError

LOCAL_EMAIL = "local@localhost"
KEY_FILE = "local-api-key"


def _say(message: str) -> None:
    print(message, flush=True)


def _leaves(group: BaseException) -> list[BaseException]:
    if isinstance(group, BaseExceptionGroup):
        return [leaf for exc in group.exceptions for leaf in _leaves(exc)]
    return [group]


def _run(async_fn: Callable[..., Any], *args: Any) -> Any:
    """``trio.run``, re-raising our own error bare out of the groups Trio wraps it in.

    A nursery (trio-asyncio's loop is one) wraps whatever escapes it in an
    exception group. A group that holds only :class:`CommandError` (or Ctrl-C)
    is the user's business: its first leaf is raised alone. A group with
    anything else in it is a bug and is raised whole, traceback and all.
    """
    try:
        return trio.run(async_fn, *args)
    except BaseExceptionGroup as group:
        ours, rest = group.split((CommandError, KeyboardInterrupt))
        if ours is None or rest is not None:
            raise
        raise _leaves(ours)[0] from None


# -- setup ------------------------------------------------------------------------------


def cmd_setup(config: Config, args: argparse.Namespace) -> int:
    from pool import DockerClient, PoolError
    from pool._images import build_all
    from pool._setup import ensure_engine, ensure_packages, ensure_runsc

    t0 = time.monotonic()
    try:
        from pool._docker import socket_path_from_env
        from pool._setup import _engine_answers

        engine_up = _run(_engine_answers, socket_path_from_env())
        ensure_packages(_say, need_dockerd=not engine_up)
        runsc = ensure_runsc(_say)
        state = _run(ensure_engine, runsc, config.data_dir, _say)
        _say(
            f"engine ready ({time.monotonic() - t0:.1f}s): {state.socket_path}, "
            f"runtimes {', '.join(state.runtimes)}"
        )
        if args.no_images:
            return 0

        async def build() -> dict[str, str]:
            async with DockerClient(state.socket_path) as client:
                return await build_all(client, config.data_dir, _say)

        tags = _run(build)
        _say(f"images ready ({time.monotonic() - t0:.1f}s): {', '.join(tags.values())}")
    except* (PoolError, OSError) as group:
        raise CommandError(f"setup failed: {_one_line(group)}") from None
    return 0


def _one_line(group: BaseExceptionGroup[Any]) -> str:
    return "; ".join(str(leaf).strip().replace("\n", " ") for leaf in _leaves(group))


def _docker(config: Config, fn: Callable[[Any], Any]) -> Any:
    """Run ``await fn(client)`` with a client of the configured engine."""
    from pool import DockerClient, PoolError, socket_path_from_env

    async def main() -> Any:
        async with DockerClient(socket_path_from_env()) as client:
            return await fn(client)

    try:
        return _run(main)
    except* PoolError as group:
        raise CommandError(f"{_one_line(group)} (cinch doctor says more)") from None


def cmd_images_build(config: Config, args: argparse.Namespace) -> int:
    from pool._images import build_all

    unknown = set(args.language) - {"python", "javascript"}
    if unknown:
        raise CommandError(
            f"unknown language(s): {', '.join(sorted(unknown))}; use python and/or javascript"
        )
    t0 = time.monotonic()
    tags = _docker(
        config, lambda client: build_all(client, config.data_dir, _say, args.language or None)
    )
    _say(f"done in {time.monotonic() - t0:.1f}s: {json.dumps(tags)}")
    return 0


def cmd_images_prune(config: Config, args: argparse.Namespace) -> int:
    from pool._images import prune

    _docker(config, lambda client: prune(client, _say))
    return 0


def cmd_doctor(config: Config, args: argparse.Namespace) -> int:
    from ._doctor import run_doctor

    return int(_run(run_doctor, config))


def cmd_cleanup(config: Config, args: argparse.Namespace) -> int:
    from ._leftovers import remove_owner, survey
    from ._pools import sandbox_cgroup_parent

    async def main(client: Any) -> int:
        owners = await survey(client)
        cgroup_parent = await sandbox_cgroup_parent(client, config.cgroup_parent)
        if args.owner:
            named = [o for o in owners if o.id == args.owner]
            if not named:
                _say(f"no containers of {args.owner}")
                return 0
            if named[0].status == "alive":
                raise CommandError(f"{args.owner} is alive ({named[0].reason}); stop it first")
            owners = named
        total = 0
        for o in owners:
            n = len(o.containers)
            if o.status == "dead" or args.owner:
                if args.dry_run:
                    _say(f"would remove {n} container(s) of {o.id}: {o.reason}")
                else:
                    total += await remove_owner(client, o.id, cgroup_parent)
                    _say(f"removed {n} container(s) of {o.id}: {o.reason}")
            else:
                _say(f"kept {n} container(s) of {o.id} ({o.status}: {o.reason})")
        if not owners:
            _say("no containers of other instances")
        return 0

    return int(_docker(config, main))


# -- serving ------------------------------------------------------------------------------


async def _ensure_local_key(service: Any) -> None:
    """First run: a local account and key, printed once and saved 0600."""
    key_path = service.config.data_dir / KEY_FILE
    store = service.store
    if key_path.exists():
        _say(f"An API key already exists in {key_path} (shown only when it was made).")
        _say(f"Mint another with: cinch key create {LOCAL_EMAIL}")
        return
    row = await store.account_by_email(LOCAL_EMAIL)
    account_id = (
        row["id"]
        if row
        else await store.create_account(LOCAL_EMAIL, None, service.config.signup_credits)
    )
    key, _ = await store.create_key(account_id, "local")
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    _say("")
    _say(f"Your API key (shown once; saved to {key_path}, mode 0600):")
    _say(f"  {key}")
    _say("")
    _say("Try it:")
    body = json.dumps({"code": "print(2 + 2)"})
    _say(
        f"  curl -s {service.base_url}/run -H {shlex.quote('Authorization: Bearer ' + key)} "
        f"-H 'Content-Type: application/json' -d {shlex.quote(body)}"
    )
    _say("")
    _say(f"Dashboard: {service.base_url}/login as {LOCAL_EMAIL}, once it has a password:")
    _say(f"  cinch password reset {LOCAL_EMAIL}")


def cmd_serve(config: Config, args: argparse.Namespace) -> int:
    from pool import InstanceLocked

    from ._service import SetupNeeded, serve

    async def on_ready(service: Any) -> None:
        # Say "up" only once the first call will find a warm sandbox.
        with trio.move_on_after(120):
            for name in service.scheduler.languages:
                await service.scheduler.pool(name).wait_ready()
        _say(f"Cinch is up on {service.base_url} (instance {service.instance.id}).")
        if args.local_key:
            await _ensure_local_key(service)
        _say("Stop it with Ctrl-C or SIGTERM.")

    from ._store import StoreError

    try:
        _run(lambda: serve(config, on_ready=on_ready))
    except* (SetupNeeded, InstanceLocked, StoreError) as group:
        raise CommandError(f"cannot start: {_one_line(group)}") from None
    return 0


def cmd_agent(config: Config, args: argparse.Namespace) -> int:
    from ._roles_cli import run_agent

    return run_agent(config, _say, _run, _one_line)


def cmd_api(config: Config, args: argparse.Namespace) -> int:
    from ._roles_cli import run_api

    return run_api(config, _say, _run, _one_line)


def cmd_up(config: Config, args: argparse.Namespace) -> int:
    rc = cmd_setup(config, argparse.Namespace(no_images=False))
    if rc:
        return rc
    args.local_key = True
    return cmd_serve(config, args)


# -- administration -------------------------------------------------------------------------

# How long an admin command waits for the database (or the embedded one to start).
DATABASE_TIMEOUT_S = 30


def _with_store(config: Config, fn: Any) -> Any:
    """Run ``await fn(store)`` against the configured database and return its result."""
    import trio_asyncio

    from ._store import Store, StoreError

    async def main() -> Any:
        async with trio_asyncio.open_loop():
            try:
                with trio.fail_after(DATABASE_TIMEOUT_S):
                    store = await Store.open(
                        config.database_url, config.data_dir, _admin_instance(config)
                    )
            except trio.TooSlowError:
                raise CommandError(
                    f"the database did not answer within {DATABASE_TIMEOUT_S} s ({_where(config)})"
                ) from None
            except StoreError as exc:
                raise CommandError(_hide_password(f"{exc} ({_where(config)})", config)) from exc
            except OSError as exc:  # e.g. the data dir is not ours to read or write
                raise CommandError(f"cannot open the database: {exc} ({_where(config)})") from exc
            try:
                return await fn(store)
            except StoreError as exc:
                raise CommandError(_hide_password(str(exc), config)) from exc
            finally:
                await store.aclose()

    return _run(main)


def _where(config: Config) -> str:
    if config.database_url:
        return "CINCH_DATABASE_URL=" + redact_url(config.database_url)
    return f"embedded, in {config.data_dir / 'pgdata'}"


def _hide_password(message: str, config: Config) -> str:
    try:
        password = urlsplit(config.database_url).password
    except ValueError:
        password = None
    return message.replace(password, "***") if password else message


def _admin_instance(config: Config) -> str:
    path = config.data_dir / "instance-id"
    return "admin-" + (path.read_text().strip() if path.exists() else "none")


async def _account(store: Any, email: str) -> Any:
    row = await store.account_by_email(email)
    if row is None:
        raise CommandError(f"no account with the e-mail {email!r} (cinch account list shows them)")
    return row


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value is not None else "never"


def _columns(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        _say("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())


PASSWORD_MIN = 8
PASSWORD_MAX = 1024
PROMPT = "-"  # --password with no value (or the old "--password -") asks on the terminal


def _password_arguments(parser: argparse.ArgumentParser, *, prompt_by_default: bool) -> None:
    group = parser.add_mutually_exclusive_group()
    ask = "(the default) " if prompt_by_default else ""
    group.add_argument(
        "--password",
        nargs="?",
        const=PROMPT,
        metavar="-",
        help=f"{ask}ask for the password on the terminal, twice; never given as a value",
    )
    group.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of standard input (for scripts)",
    )


def _read_password(args: argparse.Namespace, *, wanted: bool) -> str | None:
    """The password asked for by ``--password`` / ``--password-stdin``; None if neither.

    A password is never taken from the command line: ``ps`` and shell history
    would show it to anyone on the machine.
    """
    if args.password not in (None, PROMPT):
        raise CommandError(
            "passwords are not taken on the command line (ps and shell history show them): "
            "use --password to be asked, or --password-stdin"
        )
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif args.password == PROMPT or wanted:
        if not sys.stdin.isatty():
            raise CommandError("no terminal to ask for the password: use --password-stdin")
        password = getpass.getpass("password: ")
        if getpass.getpass("the same again: ") != password:
            raise CommandError("the two passwords differ; nothing was changed")
    else:
        return None
    if not PASSWORD_MIN <= len(password) <= PASSWORD_MAX:
        raise CommandError(f"the password must be {PASSWORD_MIN} to {PASSWORD_MAX} characters long")
    return password


def cmd_account_create(config: Config, args: argparse.Namespace) -> int:
    from ._passwords import hash_password

    password = _read_password(args, wanted=False)
    credits = config.signup_credits if args.credits is None else args.credits
    if credits < 0:
        raise CommandError("--credits must be 0 or more")

    async def run(store: Any) -> int:
        pw = hash_password(password) if password else None
        try:
            return int(await store.create_account(args.email, pw, credits))
        except ValueError as exc:  # the e-mail is taken
            raise CommandError(f"{args.email}: {exc}") from None

    account_id = _with_store(config, run)
    _say(f"account {args.email} created (id {account_id}) with {credits} credits")
    return 0


def cmd_account_list(config: Config, args: argparse.Namespace) -> int:
    async def run(store: Any) -> list[list[str]]:
        rows = await store.fetch("SELECT id, email, created_at FROM accounts ORDER BY id")
        table = []
        for row in rows:
            balance, available = await store.balance(row["id"])
            table.append(
                [
                    str(row["id"]),
                    row["email"] or "(no e-mail)",
                    str(balance),
                    str(available),
                    _when(row["created_at"]),
                ]
            )
        return table

    table = _with_store(config, run)
    if not table:
        _say("no accounts yet; create one with: cinch account create EMAIL")
        return 0
    _columns(["id", "e-mail", "balance", "available", "created (UTC)"], table)
    return 0


def cmd_account_show(config: Config, args: argparse.Namespace) -> int:
    async def run(store: Any) -> tuple[Any, int, int, int]:
        row = await _account(store, args.email)
        balance, available = await store.balance(row["id"])
        keys = await store.list_keys(row["id"])
        return row, balance, available, len(keys)

    row, balance, available, keys = _with_store(config, run)
    _say(f"account    {row['email']} (id {row['id']})")
    _say(f"created    {_when(row['created_at'])} UTC")
    _say(f"password   {'set' if row['password_hash'] else 'none (no dashboard log-in)'}")
    _say(f"balance    {balance} credits")
    _say(f"available  {available} credits (the balance less holds of runs in flight)")
    _say(f"keys       {keys} active (cinch key list {args.email})")
    return 0


def cmd_key_create(config: Config, args: argparse.Namespace) -> int:
    async def run(store: Any) -> str:
        key, _ = await store.create_key((await _account(store, args.email))["id"], args.name)
        return str(key)

    key = _with_store(config, run)
    _say("New API key (shown once):")
    _say(key)
    return 0


def cmd_key_list(config: Config, args: argparse.Namespace) -> int:
    async def run(store: Any) -> list[Any]:
        return list(await store.list_keys((await _account(store, args.email))["id"]))

    keys = _with_store(config, run)
    if not keys:
        _say(f"{args.email} has no active keys; make one with: cinch key create {args.email}")
        return 0
    _columns(
        ["id", "name", "key", "created (UTC)", "last used"],
        [
            [
                str(k["id"]),
                k["name"],
                f"cinch_live_...{k['last4']}",
                _when(k["created_at"]),
                _when(k["last_used_at"]),
            ]
            for k in keys
        ],
    )
    return 0


def cmd_key_revoke(config: Config, args: argparse.Namespace) -> int:
    async def run(store: Any) -> Any:
        account_id = (await _account(store, args.email))["id"]
        key = next((k for k in await store.list_keys(account_id) if k["id"] == args.key_id), None)
        if key is None:
            raise CommandError(
                f"{args.email} has no active key with id {args.key_id} "
                f"(cinch key list {args.email} shows them)"
            )
        await store.revoke_key(account_id, args.key_id)
        return key

    key = _with_store(config, run)
    _say(
        f"revoked key {key['id']} ({key['name']}, cinch_live_...{key['last4']}) of {args.email}; "
        "requests with it now get 401"
    )
    return 0


def cmd_credits_grant(config: Config, args: argparse.Namespace) -> int:
    if args.amount == 0:
        raise CommandError("the amount must not be 0")

    async def run(store: Any) -> tuple[int, int]:
        account_id = (await _account(store, args.email))["id"]
        if args.amount < 0:
            balance, _ = await store.balance(account_id)
            if balance + args.amount < 0:
                raise CommandError(
                    f"cannot take back {-args.amount} credits: {args.email} has {balance}"
                )
        await store.credit(
            account_id,
            args.amount,
            "adjust" if args.amount < 0 else "grant",
            f"admin:{time.time_ns()}",
        )
        return await store.balance(account_id)  # type: ignore[no-any-return]

    balance, available = _with_store(config, run)
    _say(f"{args.email}: balance {balance}, available {available}")
    return 0


def cmd_password_reset(config: Config, args: argparse.Namespace) -> int:
    from ._passwords import hash_password

    password = _read_password(args, wanted=True)
    assert password is not None

    async def run(store: Any) -> int:
        account_id = (await _account(store, args.email))["id"]
        await store.execute(
            "UPDATE accounts SET password_hash = $2 WHERE id = $1",
            account_id,
            hash_password(password),
        )
        # Whoever knew the old password is logged out of the dashboard too.
        return int(await store.delete_account_sessions(account_id))

    ended = _with_store(config, run)
    _say(f"password of {args.email} reset; {ended} dashboard session(s) logged out")
    return 0


def cmd_config(config: Config, args: argparse.Namespace) -> int:
    for name, default, kind in describe():
        current = os.environ.get(name)
        value = redact(name, current if current is not None else default)
        _say(f"{name}={value}  ({kind}, default {redact(name, default)})")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line on stderr and exit status 1."""

    def error(self, message: str) -> NoReturn:
        self.exit(1, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cinch")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def _command(
    sub: Any,
    name: str,
    fn: Callable[[Config, argparse.Namespace], int],
    summary: str,
    more: str = "",
) -> argparse.ArgumentParser:
    """A subcommand whose one-line summary is also the start of its own --help."""
    p: argparse.ArgumentParser = sub.add_parser(
        name, help=summary, description=f"{summary[0].upper()}{summary[1:]}. {more}".strip()
    )
    p.set_defaults(fn=fn, prog=p.prog)
    return p


def _group(sub: Any, name: str, summary: str) -> Any:
    p = sub.add_parser(name, help=summary, description=summary[0].upper() + summary[1:] + ".")
    return p.add_subparsers(dest=f"{name}_command", metavar="COMMAND", required=True)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="cinch",
        description="Set up, check, serve and administer a Cinch instance. Settings come from "
        "CINCH_* environment variables (cinch config lists them).",
    )
    parser.add_argument("--version", action="version", version=f"cinch {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = _command(
        sub,
        "setup",
        cmd_setup,
        "install and start the Docker engine with gVisor's runsc, then build the images",
        "Idempotent: only what is missing is installed or built. Needs root.",
    )
    p.add_argument("--no-images", action="store_true", help="set up the engine only")
    isub = _group(sub, "images", "build or prune the sandbox images")
    b = _command(isub, "build", cmd_images_build, "build the images (only what changed)")
    b.add_argument("language", nargs="*", help="python and/or javascript (default: both)")
    _command(
        isub,
        "prune",
        cmd_images_prune,
        "remove outdated images",
        "A running server keeps the image it started with: restart servers first.",
    )
    _command(
        sub,
        "doctor",
        cmd_doctor,
        "check every prerequisite and that the configured server answers",
        "One line per check: OK, FAIL (with the fix) or SKIP; exit status 1 if any failed.",
    )
    p = _command(
        sub,
        "cleanup",
        cmd_cleanup,
        "remove the sandboxes of dead Cinch instances",
        "An instance is dead when no process holds its data dir's lock; live instances' "
        "sandboxes are never touched.",
    )
    p.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    p.add_argument("--owner", help="remove this instance id's sandboxes even if not proven dead")
    p = _command(sub, "serve", cmd_serve, "run the API with warm pools until Ctrl-C or SIGTERM")
    p.add_argument(
        "--local-key",
        action="store_true",
        help=f"the first time, create the account {LOCAL_EMAIL} and print a key once",
    )
    _command(
        sub,
        "agent",
        cmd_agent,
        "many hosts: run this host's warm pools for API replicas (no database)",
        "Listens on CINCH_HOST:CINCH_PORT; callers need CINCH_AGENT_TOKEN. README: Many hosts.",
    )
    _command(
        sub,
        "api",
        cmd_api,
        "many hosts: run a stateless API replica that routes runs to agents (no engine)",
        "Needs CINCH_DATABASE_URL, CINCH_AGENT_TOKEN and CINCH_AGENTS or CINCH_AGENTS_DNS.",
    )
    _command(
        sub,
        "up",
        cmd_up,
        "set up, then serve; the first time, print a key and a curl line that uses it",
    )

    asub = _group(sub, "account", "create, list and show accounts")
    a = _command(
        asub,
        "create",
        cmd_account_create,
        "create an account with the sign-up grant of credits",
        "Give it a password to let it log into the dashboard.",
    )
    a.add_argument("email", metavar="EMAIL", help="the account's e-mail")
    _password_arguments(a, prompt_by_default=False)
    a.add_argument("--credits", type=int, help="initial credits instead of CINCH_SIGNUP_CREDITS")
    _command(asub, "list", cmd_account_list, "list every account with its balance")
    a = _command(
        asub, "show", cmd_account_show, "show one account: its balance, credits available, keys"
    )
    a.add_argument("email", metavar="EMAIL", help="the account's e-mail")

    ksub = _group(sub, "key", "create, list and revoke API keys")
    k = _command(ksub, "create", cmd_key_create, "issue a new API key (printed once)")
    k.add_argument("email", metavar="EMAIL", help="the account's e-mail")
    k.add_argument("--name", default="cli", help="a label shown in key lists (default: cli)")
    k = _command(
        ksub,
        "list",
        cmd_key_list,
        "list an account's active keys",
        "Shows each key's id (for cinch key revoke), name and last four characters.",
    )
    k.add_argument("email", metavar="EMAIL", help="the account's e-mail")
    k = _command(
        ksub,
        "revoke",
        cmd_key_revoke,
        "revoke a key at once, by the id that cinch key list shows",
    )
    k.add_argument("email", metavar="EMAIL", help="the account's e-mail")
    k.add_argument("key_id", metavar="KEY_ID", type=int, help="the key's id")

    csub = _group(sub, "credits", "grant or take back credits")
    c = _command(
        csub,
        "grant",
        cmd_credits_grant,
        "grant credits to an account (a negative amount takes them back)",
        "Each grant is a ledger row. 1 credit = 1 ms of run time.",
    )
    c.add_argument("email", metavar="EMAIL", help="the account's e-mail")
    c.add_argument("amount", type=int)

    psub = _group(sub, "password", "reset dashboard passwords")
    r = _command(
        psub,
        "reset",
        cmd_password_reset,
        "set a new dashboard password (no e-mail needed); logs the account out everywhere",
        "Asks on the terminal unless --password-stdin is given.",
    )
    r.add_argument("email", metavar="EMAIL", help="the account's e-mail")
    _password_arguments(r, prompt_by_default=True)
    _command(
        sub,
        "config",
        cmd_config,
        "print every CINCH_* setting, its value and default (secrets hidden)",
    )
    return parser


# Commands that run the server log what the libraries say; the others only say
# what they did (and warnings), unless CINCH_LOG_LEVEL asks for more.
_SERVER_COMMANDS = ("serve", "up", "agent", "api")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        parser.print_help()
        return 0
    args = parser.parse_args(argv)
    try:
        config = Config.from_env()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 1
    level = config.log_level
    if args.command not in _SERVER_COMMANDS and "CINCH_LOG_LEVEL" not in os.environ:
        level = "WARNING"
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    os.environ.setdefault("XDG_RUNTIME_DIR", str(Path(config.data_dir) / "run"))
    try:
        return int(args.fn(config, args) or 0)
    except CommandError as exc:
        print(f"{args.prog}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
