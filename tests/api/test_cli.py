"""The `cinch` command as a user runs it."""

from __future__ import annotations

import http.server
import os
import re
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from api._cli import build_parser
from tests.conftest import REPO, _free_port, run_asyncio

EMAIL = "ada@example.com"


def _serve_until_ready(
    env: dict[str, str], timeout_s: float = 90
) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "api", "serve", "--local-key"],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    out = ""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        out += line
        if "Stop it with" in line:
            return proc, out
    proc.kill()
    raise AssertionError(f"cinch serve did not come up:\n{out}")


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.stdout is not None
    tail = proc.stdout.read()  # drains until exit
    proc.stdout.close()
    assert proc.wait(30) == 0, tail


@pytest.mark.gvisor
@pytest.mark.postgres
def test_first_run_prints_a_working_key_once_and_later_runs_keep_it(
    engine_ready, database_url, tmp_path
):
    env = {
        **os.environ,
        "CINCH_DATA_DIR": str(tmp_path),
        "CINCH_DATABASE_URL": database_url,
        "CINCH_PORT": str(_free_port()),
        "CINCH_POOL_PYTHON": "1",
        "CINCH_POOL_JAVASCRIPT": "0",
    }
    proc, out = _serve_until_ready(env)
    try:
        key = re.search(r"cinch_live_[0-9A-Za-z]{43}", out)
        assert key, out
        key_file = tmp_path / "local-api-key"
        assert key_file.read_text().strip() == key.group(0)
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        curl = next(line.strip() for line in out.splitlines() if line.strip().startswith("curl "))
        answer = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=60)
        assert '"stdout":"4\\n"' in answer.stdout, answer.stdout + answer.stderr
    finally:
        _stop(proc)

    proc, out = _serve_until_ready(env)
    try:
        assert "already exists" in out
        assert "cinch key create" in out
        assert not re.search(r"cinch_live_[0-9A-Za-z]{43}", out)
        answer = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=60)
        assert '"stdout":"4\\n"' in answer.stdout, "the first key must keep working"
    finally:
        _stop(proc)


# -- administration commands, each run as a user runs it ------------------------------------


def _env(data_dir: Path, **settings: str) -> dict[str, str]:
    """This process's environment without its CINCH_* settings, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CINCH_")}
    return {**env, "CINCH_DATA_DIR": str(data_dir), **settings}


def cinch(
    env: dict[str, str], *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "api", *args],
        env=env,
        cwd=REPO,
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )


def assert_one_line_error(out: subprocess.CompletedProcess[str], *words: str) -> None:
    """Exit status 1, nothing on stdout, exactly one line on stderr naming ``words``."""
    assert out.returncode == 1, out
    assert out.stdout == "", out
    lines = out.stderr.splitlines()
    assert len(lines) == 1, out.stderr
    for word in words:
        assert word in lines[0], lines[0]


@pytest.fixture
def db_env(database_url: str, tmp_path: Path) -> dict[str, str]:
    return _env(tmp_path, CINCH_DATABASE_URL=database_url)


def test_bad_configuration_names_the_variable(tmp_path):
    out = cinch(_env(tmp_path, CINCH_POOL_PYTHON="many"), "config")
    assert_one_line_error(out, "CINCH_POOL_PYTHON")


@pytest.mark.postgres
@pytest.mark.parametrize(
    "command",
    [
        ["key", "create"],
        ["key", "list"],
        ["key", "revoke", "{email}", "1"],
        ["credits", "grant", "{email}", "100"],
        ["account", "show"],
    ],
    ids=lambda c: " ".join(c[:2]),
)
def test_unknown_email_is_one_line_and_exit_1(db_env, command):
    args = [a.format(email="nobody@example.com") for a in command]
    if "{email}" not in command:
        args.append("nobody@example.com")
    out = cinch(db_env, *args)
    assert_one_line_error(out, "nobody@example.com", "cinch account list")
    assert "Traceback" not in out.stderr
    assert "ExceptionGroup" not in out.stderr


@pytest.mark.postgres
def test_password_reset_of_an_unknown_email_is_one_line(db_env):
    out = cinch(
        db_env, "password", "reset", "nobody@example.com", "--password-stdin", stdin="long enough\n"
    )
    assert_one_line_error(out, "nobody@example.com")


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["key", "revoke", EMAIL, "abc"], ["KEY_ID", "invalid int"]),
        (["key", "create"], ["EMAIL", "required"]),
        (["key"], ["cinch key", "COMMAND"]),
        (["credits", "grant", EMAIL], ["amount"]),
        (["frobnicate"], ["invalid choice"]),
        (["images", "build", "cobol"], ["cobol"]),
    ],
)
def test_bad_arguments_are_one_line_and_exit_1(tmp_path, args, words):
    assert_one_line_error(cinch(_env(tmp_path), *args), *words)


def test_unreachable_database_is_one_line_without_the_password(tmp_path):
    url = f"postgresql://cinch:hunter2secret@127.0.0.1:{_free_port()}/cinch"
    out = cinch(_env(tmp_path, CINCH_DATABASE_URL=url), "account", "list")
    assert_one_line_error(out, "cannot connect to the database", "127.0.0.1")
    assert "hunter2secret" not in out.stderr


@pytest.mark.postgres
def test_accounts_keys_and_credits_from_the_command_line(db_env):
    out = cinch(
        db_env,
        "account",
        "create",
        EMAIL,
        "--password-stdin",
        "--credits",
        "500",
        stdin="correct horse\n",
    )
    assert out.returncode == 0, out
    assert out.stderr == ""
    assert EMAIL in cinch(db_env, "account", "list").stdout

    out = cinch(db_env, "key", "create", EMAIL, "--name", "ci")
    assert out.returncode == 0, out
    key = re.search(r"cinch_live_[0-9A-Za-z]{43}", out.stdout)
    assert key, out.stdout

    listing = cinch(db_env, "key", "list", EMAIL).stdout
    row = next(line for line in listing.splitlines() if key.group(0)[-4:] in line)
    assert key.group(0) not in listing, "a key is shown only once, when it is made"
    key_id = row.split()[0]
    assert "ci" in row.split()

    out = cinch(db_env, "key", "revoke", EMAIL, "999999")
    assert_one_line_error(out, "no active key with id 999999")
    out = cinch(db_env, "key", "revoke", EMAIL, key_id)
    assert out.returncode == 0, out
    assert "revoked" in out.stdout
    assert key.group(0)[-4:] not in cinch(db_env, "key", "list", EMAIL).stdout
    assert_one_line_error(cinch(db_env, "key", "revoke", EMAIL, key_id), "no active key")

    assert cinch(db_env, "credits", "grant", EMAIL, "250").returncode == 0
    show = cinch(db_env, "account", "show", EMAIL)
    assert show.returncode == 0, show
    assert re.search(r"^balance\s+750 credits", show.stdout, re.M), show.stdout
    assert re.search(r"^password\s+set", show.stdout, re.M), show.stdout
    assert_one_line_error(cinch(db_env, "credits", "grant", EMAIL, "-1000"), "has 750")
    listing = cinch(db_env, "account", "list").stdout
    assert re.search(rf"{re.escape(EMAIL)}\s+750\s+750", listing), listing


@pytest.mark.postgres
def test_passwords_are_read_from_stdin_or_a_prompt_never_argv(db_env, database_url):
    from api._passwords import verify_password

    out = cinch(db_env, "account", "create", EMAIL, "--password", "hunter2hunter2")
    assert_one_line_error(out, "--password-stdin")
    assert "no account" in cinch(db_env, "account", "show", EMAIL).stderr, "nothing was made"

    # No terminal to prompt on (stdin is /dev/null here): say so instead of hanging.
    assert_one_line_error(cinch(db_env, "account", "create", EMAIL, "--password"), "terminal")
    assert_one_line_error(cinch(db_env, "password", "reset", EMAIL), "terminal")

    assert cinch(db_env, "account", "create", EMAIL).returncode == 0
    out = cinch(db_env, "password", "reset", EMAIL, "--password-stdin", stdin="short\n")
    assert_one_line_error(out, "8 to 1024 characters")
    out = cinch(db_env, "password", "reset", EMAIL, "--password-stdin", stdin="a new passphrase\n")
    assert out.returncode == 0, out

    async def stored_hash() -> str:
        import asyncpg

        conn = await asyncpg.connect(database_url)
        try:
            return await conn.fetchval("SELECT password_hash FROM accounts WHERE email = $1", EMAIL)
        finally:
            await conn.close()

    assert verify_password(run_asyncio(stored_hash), "a new passphrase")


@pytest.mark.postgres
@pytest.mark.slow
def test_embedded_database_commands_print_no_library_logs(tmp_path):
    env = _env(tmp_path)  # no CINCH_DATABASE_URL: pgserver starts under the data dir
    out = cinch(env, "account", "create", EMAIL)
    assert out.returncode == 0, out
    assert out.stderr == "", out.stderr
    assert out.stdout.splitlines() == [f"account {EMAIL} created (id 1) with 10000 credits"]
    out = cinch(env, "account", "list")
    assert out.stderr == "", out.stderr
    assert "postmaster" not in out.stdout
    assert "INFO" not in out.stdout


def test_config_hides_secrets_and_the_database_password(tmp_path):
    env = _env(
        tmp_path,
        CINCH_DATABASE_URL="postgresql://cinch:db-pass-123@db.internal:5432/cinch",
        CINCH_STRIPE_SECRET_KEY="sk_live_abcdef",
        CINCH_STRIPE_WEBHOOK_SECRET="whsec_abcdef",
        CINCH_SESSION_SECRET="session-secret-xyz",
        CINCH_PAYMENTS="stripe",
    )
    out = cinch(env, "config")
    assert out.returncode == 0, out
    for secret in ("db-pass-123", "sk_live_abcdef", "whsec_abcdef", "session-secret-xyz"):
        assert secret not in out.stdout
    assert "CINCH_DATABASE_URL=postgresql://cinch:***@db.internal:5432/cinch " in out.stdout
    assert "CINCH_STRIPE_SECRET_KEY=(set, hidden) " in out.stdout
    assert "CINCH_SESSION_SECRET=(set, hidden) " in out.stdout
    assert "CINCH_PAYMENTS=stripe " in out.stdout


def test_version(tmp_path):
    out = cinch(_env(tmp_path), "--version")
    assert out.returncode == 0
    assert re.fullmatch(r"cinch \d+\.\d+\.\d+\n", out.stdout), out.stdout


def _subcommands(parser, path=()):
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield (*path, name), helps.get(name), sub
                yield from _subcommands(sub, (*path, name))


def test_every_subcommand_says_what_it_does():
    commands = list(_subcommands(build_parser()))
    names = {" ".join(path) for path, _, _ in commands}
    assert {"key list", "key revoke", "account list", "account show", "doctor"} <= names
    for path, summary, parser in commands:
        assert len(summary or "") > 10, path
        assert summary[1:] in (parser.description or ""), path


# -- doctor ---------------------------------------------------------------------------------


class _Healthz(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        ok = self.path == "/healthz"
        self.send_response(200 if ok else 404)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"status": "ok"}' if ok else b"{}")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def healthz_url() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Healthz)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _doctor_env(tmp_path: Path, **settings: str) -> dict[str, str]:
    # No engine (so no sandbox is started) and no database: only the server check matters.
    return {
        **_env(tmp_path, CINCH_DOCTOR_SKIP_DB="1", **settings),
        "DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock",
    }


def test_doctor_says_whether_the_configured_server_answers(tmp_path, healthz_url):
    out = cinch(_doctor_env(tmp_path, CINCH_PUBLIC_URL=healthz_url), "doctor")
    assert f"OK    server answers: {healthz_url}/healthz answered in" in out.stdout, out.stdout
    assert "FAIL  engine reachable" in out.stdout
    assert out.returncode == 1
    assert all(len(line) <= 120 for line in out.stdout.splitlines()), out.stdout

    port = str(_free_port())
    out = cinch(_doctor_env(tmp_path, CINCH_PORT=port), "doctor")
    assert f"FAIL  server answers: nothing answers at http://127.0.0.1:{port}/healthz" in out.stdout
    assert "Traceback" not in out.stdout + out.stderr


def test_readme_documents_every_setting():
    from api._config import describe

    readme = (REPO / "README.md").read_text()
    missing = [name for name, _, _ in describe() if f"`{name}" not in readme]
    assert not missing, f"README.md's configuration table lacks {missing}"
