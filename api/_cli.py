"""The ``cinch`` command: set up, check, serve and administer a Cinch instance."""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import trio

from ._config import Config, ConfigError, describe

LOCAL_EMAIL = "local@localhost"
KEY_FILE = "local-api-key"


def _say(message: str) -> None:
    print(message, flush=True)


# -- setup ------------------------------------------------------------------------------


def cmd_setup(config: Config, args: argparse.Namespace) -> int:
    from pool import DockerClient
    from pool._images import build_all
    from pool._setup import SetupError, ensure_engine, ensure_packages, ensure_runsc

    t0 = time.monotonic()
    try:
        from pool._docker import socket_path_from_env
        from pool._setup import _engine_answers

        engine_up = trio.run(_engine_answers, socket_path_from_env())
        ensure_packages(_say, need_dockerd=not engine_up)
        runsc = ensure_runsc(_say)
        state = trio.run(ensure_engine, runsc, config.data_dir, _say)
        _say(
            f"engine ready ({time.monotonic() - t0:.1f}s): {state.socket_path}, "
            f"runtimes {', '.join(state.runtimes)}"
        )
        if args.no_images:
            return 0

        async def build() -> dict[str, str]:
            async with DockerClient(state.socket_path) as client:
                return await build_all(client, config.data_dir, _say)

        tags = trio.run(build)
        _say(f"images ready ({time.monotonic() - t0:.1f}s): {', '.join(tags.values())}")
    except (SetupError, OSError) as exc:
        _say(f"setup failed: {exc}")
        return 1
    return 0


def cmd_images_build(config: Config, args: argparse.Namespace) -> int:
    from pool import DockerClient, socket_path_from_env
    from pool._images import build_all

    unknown = set(args.language) - {"python", "javascript"}
    if unknown:
        _say(f"unknown language(s): {', '.join(sorted(unknown))}; use python and/or javascript")
        return 2

    async def build() -> dict[str, str]:
        async with DockerClient(socket_path_from_env()) as client:
            return await build_all(client, config.data_dir, _say, args.language or None)

    t0 = time.monotonic()
    tags = trio.run(build)
    _say(f"done in {time.monotonic() - t0:.1f}s: {json.dumps(tags)}")
    return 0


def cmd_images_prune(config: Config, args: argparse.Namespace) -> int:
    from pool import DockerClient, socket_path_from_env
    from pool._images import prune

    async def run() -> None:
        async with DockerClient(socket_path_from_env()) as client:
            await prune(client, _say)

    trio.run(run)
    return 0


def cmd_doctor(config: Config, args: argparse.Namespace) -> int:
    from ._doctor import run_doctor

    return trio.run(run_doctor, config)


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


def _leaves(group: BaseException) -> list[BaseException]:
    if isinstance(group, BaseExceptionGroup):
        return [leaf for exc in group.exceptions for leaf in _leaves(exc)]
    return [group]


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

    failed = False
    try:
        trio.run(lambda: serve(config, on_ready=on_ready))
    except* (SetupNeeded, InstanceLocked) as group:
        for exc in _leaves(group):
            _say(f"cannot start: {exc}")
        failed = True
    return 1 if failed else 0


def cmd_up(config: Config, args: argparse.Namespace) -> int:
    rc = cmd_setup(config, argparse.Namespace(no_images=False))
    if rc:
        return rc
    args.local_key = True
    return cmd_serve(config, args)


# -- administration -------------------------------------------------------------------------


def _with_store(config: Config, fn: Any) -> Any:
    import trio_asyncio

    from ._store import Store

    async def main() -> Any:
        async with trio_asyncio.open_loop():
            store = await Store.open(config.database_url, config.data_dir, _admin_instance(config))
            try:
                return await fn(store)
            finally:
                await store.aclose()

    return trio.run(main)


def _admin_instance(config: Config) -> str:
    path = config.data_dir / "instance-id"
    return "admin-" + (path.read_text().strip() if path.exists() else "none")


def _account_id(store: Any, email: str) -> Any:
    async def get() -> int:
        row = await store.account_by_email(email)
        if row is None:
            raise SystemExit(f"no account {email!r}")
        return int(row["id"])

    return get()


def cmd_account_create(config: Config, args: argparse.Namespace) -> int:
    from ._passwords import hash_password

    password = None
    if args.password:
        password = getpass.getpass("password: ") if args.password == "-" else args.password

    async def run(store: Any) -> int:
        pw = hash_password(password) if password else None
        credits = config.signup_credits if args.credits is None else args.credits
        return int(await store.create_account(args.email, pw, credits))

    try:
        account_id = _with_store(config, run)
    except ValueError as exc:
        _say(str(exc))
        return 1
    _say(f"account {args.email} created (id {account_id})")
    return 0


def cmd_key_create(config: Config, args: argparse.Namespace) -> int:
    async def run(store: Any) -> str:
        key, _ = await store.create_key(await _account_id(store, args.email), args.name)
        return key

    key = _with_store(config, run)
    _say("New API key (shown once):")
    _say(key)
    return 0


def cmd_credits_grant(config: Config, args: argparse.Namespace) -> int:
    async def run(store: Any) -> tuple[int, int]:
        account_id = await _account_id(store, args.email)
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

    password = args.password or getpass.getpass("new password: ")
    if len(password) < 8:
        _say("the password must be at least 8 characters")
        return 1

    async def run(store: Any) -> int:
        account_id = await _account_id(store, args.email)
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
        _say(f"{name}={current if current is not None else default}  ({kind}, default {default})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cinch", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("setup", help="install and start the engine with runsc; build the images")
    p.add_argument("--no-images", action="store_true", help="engine only")
    p.set_defaults(fn=cmd_setup)
    p = sub.add_parser("images", help="sandbox images")
    isub = p.add_subparsers(dest="images_command", required=True)
    b = isub.add_parser("build", help="build the images (only what changed)")
    b.add_argument("language", nargs="*", help="python and/or javascript (default: both)")
    b.set_defaults(fn=cmd_images_build)
    pr = isub.add_parser("prune", help="remove outdated images (restart servers first)")
    pr.set_defaults(fn=cmd_images_prune)
    p = sub.add_parser("doctor", help="check every prerequisite")
    p.set_defaults(fn=cmd_doctor)
    p = sub.add_parser("serve", help="run the API with warm pools")
    p.add_argument("--local-key", action="store_true", help="create and print a local key once")
    p.set_defaults(fn=cmd_serve)
    p = sub.add_parser("up", help="setup, then serve; prints a key and a curl line the first time")
    p.set_defaults(fn=cmd_up)
    p = sub.add_parser("account", help="accounts")
    asub = p.add_subparsers(dest="account_command", required=True)
    a = asub.add_parser("create", help="create an account (with the signup grant)")
    a.add_argument("email")
    a.add_argument("--password", help="a password for the dashboard ('-' prompts)")
    a.add_argument("--credits", type=int, help="initial credits instead of the signup grant")
    a.set_defaults(fn=cmd_account_create)
    p = sub.add_parser("key", help="API keys")
    ksub = p.add_subparsers(dest="key_command", required=True)
    k = ksub.add_parser("create", help="issue a key (printed once)")
    k.add_argument("email")
    k.add_argument("--name", default="cli")
    k.set_defaults(fn=cmd_key_create)
    p = sub.add_parser("credits", help="credits")
    csub = p.add_subparsers(dest="credits_command", required=True)
    c = csub.add_parser("grant", help="grant (or, negative, take back) credits")
    c.add_argument("email")
    c.add_argument("amount", type=int)
    c.set_defaults(fn=cmd_credits_grant)
    p = sub.add_parser("password", help="dashboard passwords")
    psub = p.add_subparsers(dest="password_command", required=True)
    r = psub.add_parser("reset", help="set a new password (no e-mail needed)")
    r.add_argument("email")
    r.add_argument("--password")
    r.set_defaults(fn=cmd_password_reset)
    p = sub.add_parser("config", help="print every CINCH_* setting")
    p.set_defaults(fn=cmd_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = Config.from_env()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=getattr(logging, config.log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    os.environ.setdefault("XDG_RUNTIME_DIR", str(Path(config.data_dir) / "run"))
    return int(args.fn(config, args) or 0)


if __name__ == "__main__":
    sys.exit(main())
