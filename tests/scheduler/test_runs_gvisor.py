"""The run contract, end to end through the real scheduler and real gVisor (issue 3).

One scheduler over real warm pools serves the whole module: pytest-trio only has
function-scoped async fixtures, so it lives in a Trio loop of its own in a thread,
and tests hand it requests across threads.  See DESIGN.md section 3.
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from pool import OWNER_LABEL
from scheduler import RunRequest, RunResult, Termination
from tests.conftest import real_scheduler, start_live_server, stop_live_server

pytestmark = pytest.mark.gvisor

MIB = 1024 * 1024


class SharedScheduler:
    """``real_scheduler()`` running in a thread of its own for a whole module."""

    def __init__(self, **scheduler_kw: Any) -> None:
        self._kw = scheduler_kw
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="shared-scheduler", daemon=True)
        self.sandboxes: Any = None
        self.sandbox_ids: list[str] = []

    def _main(self) -> None:
        try:
            trio.run(self._serve)
        except BaseException as exc:
            self._error = exc
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        async with real_scheduler(pool_size=1, **self._kw) as sandboxes:
            self.sandboxes = sandboxes
            self._token = trio.lowlevel.current_trio_token()
            self._stop = trio.Event()
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> SharedScheduler:
        self._thread.start()
        self._ready.wait(180)
        if self._error is not None:
            raise RuntimeError("the shared scheduler did not start") from self._error
        assert self._token is not None, "the shared scheduler did not start in time"
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._token is not None and self._stop is not None:
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(120)

    async def run(self, language: str, code: str, **kw: Any) -> RunResult:
        """Run through the shared scheduler; waits in a worker thread of the caller's loop."""
        request = RunRequest(language, code, **kw)
        call = functools.partial(
            trio.from_thread.run,
            self.sandboxes.scheduler.run,
            request,
            trio_token=self._token,
        )
        result: RunResult = await trio.to_thread.run_sync(call)
        self.sandbox_ids.append(result.sandbox_id)
        return result


@pytest.fixture(scope="module")
def shared(engine_ready: bool) -> Iterator[SharedScheduler]:
    # A generous queue time-out: bursts here wait for cold starts on a busy machine.
    with SharedScheduler(queue_timeout_s=60) as s:
        yield s
    ids = s.sandbox_ids
    assert len(ids) == len(set(ids)), "a sandbox was used for more than one run"


def describe(r: RunResult) -> str:
    return (
        f"termination={r.termination} exit={r.exit_code} signal={r.signal} "
        f"stdout={r.stdout[-1500:]!r} stderr={r.stderr[-1500:]!r}"
    )


def assert_exited(r: RunResult, code: int = 0) -> None:
    assert r.termination is Termination.EXITED, describe(r)
    assert r.exit_code == code, describe(r)
    assert not r.timed_out
    assert r.billable


LANGS = pytest.mark.parametrize("language", ["python", "javascript"])


# -- the program runs the way `python3 main.py` / `node main.js` would --------------------------


@LANGS
async def test_runs_as_the_main_module(shared: SharedScheduler, language: str) -> None:
    code = {
        "python": "print(__name__ == '__main__', __file__)",
        "javascript": "console.log(require.main === module, __filename)",
    }[language]
    r = await shared.run(language, code)
    assert_exited(r)
    flag, path = r.stdout.split()
    assert flag in ("True", "true")
    assert path.startswith("/tmp/")


@LANGS
async def test_uncaught_exception_traceback_on_stderr_exit_1(
    shared: SharedScheduler, language: str
) -> None:
    code = {
        "python": "print('out')\ndef f():\n    raise ValueError('boom')\nf()\n",
        "javascript": "console.log('out');\nfunction f() { throw new Error('boom'); }\nf();\n",
    }[language]
    r = await shared.run(language, code)
    assert_exited(r, 1)
    assert r.stdout == "out\n"
    if language == "python":
        assert r.stderr.startswith("Traceback (most recent call last):\n"), r.stderr
        assert ", line 4, in <module>" in r.stderr
        assert r.stderr.rstrip().endswith("ValueError: boom")
        assert "loader" not in r.stderr  # our runner's frames are not the user's business
    else:
        assert "Error: boom" in r.stderr
        assert "main.js:2" in r.stderr


@LANGS
@pytest.mark.parametrize("status", [0, 3, 255])
async def test_exit_status_is_the_programs(
    shared: SharedScheduler, language: str, status: int
) -> None:
    code = {
        "python": f"import sys\nprint('before')\nsys.exit({status})\nprint('after')",
        "javascript": f"console.log('before');\nprocess.exit({status});\nconsole.log('after');",
    }[language]
    r = await shared.run(language, code)
    assert_exited(r, status)
    assert r.stdout == "before\n"


async def test_python_sys_exit_with_a_message(shared: SharedScheduler) -> None:
    r = await shared.run("python", "import sys\nsys.exit('bad input')")
    assert_exited(r, 1)
    assert r.stderr == "bad input\n"


@LANGS
async def test_abort_is_sigabrt_134(shared: SharedScheduler, language: str) -> None:
    code = {
        "python": "import os\nprint('x', flush=True)\nos.abort()",
        "javascript": "console.log('x');\nprocess.abort();",
    }[language]
    r = await shared.run(language, code)
    assert r.termination is Termination.SIGNAL, describe(r)
    assert r.signal == "SIGABRT"
    assert r.exit_code == 134
    assert r.billable
    assert r.stdout == "x\n"


@LANGS
async def test_stdin_is_the_string_then_eof(shared: SharedScheduler, language: str) -> None:
    stdin = "line one\nligne deux é ✓\n" + "z" * 100_000
    code = {
        "python": (
            "import sys\ndata = sys.stdin.read()\n"
            "print(len(data), repr(data[:25]), repr(sys.stdin.read()))"
        ),
        "javascript": (
            "const fs = require('node:fs');\nconst data = fs.readFileSync(0, 'utf8');\n"
            "console.log(data.length, JSON.stringify(data.slice(0, 25)), "
            "JSON.stringify(fs.readFileSync(0, 'utf8')));"
        ),
    }[language]
    r = await shared.run(language, code, stdin=stdin)
    assert_exited(r)
    quote = "'" if language == "python" else '"'
    expected_head = "line one\\nligne deux é ✓\\nz"
    assert r.stdout == f"{len(stdin)} {quote}{expected_head}{quote} {quote}{quote}\n"


@LANGS
async def test_no_stdin_means_immediate_eof(shared: SharedScheduler, language: str) -> None:
    code = {
        "python": "import sys\nprint(repr(sys.stdin.read()))\ninput()",
        "javascript": "console.log(JSON.stringify(require('node:fs').readFileSync(0, 'utf8')));",
    }[language]
    r = await shared.run(language, code)
    if language == "python":
        assert_exited(r, 1)
        assert r.stdout == "''\n"
        assert "EOFError" in r.stderr
    else:
        assert_exited(r)
        assert r.stdout == '""\n'


async def test_unhandled_promise_rejection_exits_1(shared: SharedScheduler) -> None:
    code = (
        "console.log('start');\n"
        "Promise.reject(new Error('nobody catches me'));\n"
        "setTimeout(() => console.log('not reached'), 2000);\n"
    )
    r = await shared.run("javascript", code)
    assert_exited(r, 1)
    assert r.stdout == "start\n"
    assert "nobody catches me" in r.stderr


async def test_handled_uncaught_exception_does_not_end_the_program(
    shared: SharedScheduler,
) -> None:
    code = (
        "process.on('uncaughtException', (e) => console.log('caught', e.message));\n"
        "setTimeout(() => { throw new Error('x'); }, 1);\n"
        "setTimeout(() => { console.log('after'); process.exitCode = 6; }, 50);\n"
    )
    r = await shared.run("javascript", code)
    assert_exited(r, 6)
    assert r.stdout == "caught x\nafter\n"


@LANGS
async def test_the_loaders_warm_up_output_is_not_the_programs(
    shared: SharedScheduler, language: str
) -> None:
    # The Node loader writes to stdout and stderr while it warms up; none of it is output.
    r = await shared.run(language, "")
    assert_exited(r)
    assert (r.stdout, r.stderr) == ("", "")


@pytest.mark.parametrize("ending", ["", "process.exit(2);\n"])
async def test_exit_listeners_run_once_each_as_under_node(
    shared: SharedScheduler, ending: str
) -> None:
    # As `node main.js`: each 'exit' listener once, in order, with the code, and
    # an exitCode a listener sets is the run's exit code.
    code = (
        "process.on('exit', (c) => console.log('first', c));\n"
        "process.on('exit', () => { console.log('second'); process.exitCode = 3; });\n"
        "console.log('body');\n" + ending
    )
    r = await shared.run("javascript", code)
    assert_exited(r, 3)
    assert r.stdout == f"body\nfirst {2 if ending else 0}\nsecond\n"


async def test_es_module_import_and_top_level_await(shared: SharedScheduler) -> None:
    code = (
        "import { join } from 'node:path';\n"
        "import fs from 'node:fs';\n"
        "const value = await new Promise((resolve) => setTimeout(() => resolve(join('a', 'b')), 10));\n"
        "fs.writeFileSync('esm.txt', value);\n"
        "console.log(value, fs.readFileSync('esm.txt', 'utf8'), typeof require);\n"
    )
    r = await shared.run("javascript", code)
    assert_exited(r)
    assert r.stdout == "a/b a/b undefined\n"


@LANGS
async def test_exit_right_after_200_kb_loses_nothing(
    shared: SharedScheduler, language: str
) -> None:
    code = {
        "python": (
            "import sys\nfor i in range(2048):\n    print(f'{i:05d}' + 'p' * 94)\nsys.exit(4)\n"
        ),
        "javascript": (
            "for (let i = 0; i < 2048; i++) console.log(String(i).padStart(5, '0') + 'j'.repeat(94));\n"
            "process.exit(4);\n"
        ),
    }[language]
    r = await shared.run(language, code)
    assert_exited(r, 4)
    lines = r.stdout.splitlines()
    assert len(r.stdout) == 2048 * 100
    assert [int(line[:5]) for line in lines] == list(range(2048))


# -- deadlines ---------------------------------------------------------------------------------


async def test_python_timeout_keeps_buffered_output_and_shows_keyboardinterrupt(
    shared: SharedScheduler,
) -> None:
    # Not flushed: stdout is a pipe, so this sits in Python's buffer until SIGINT unwinds.
    code = "import time\nprint('printed before the deadline')\ntime.sleep(60)\n"
    r = await shared.run("python", code, timeout_s=1)
    assert r.termination is Termination.TIMEOUT, describe(r)
    assert r.timed_out
    assert r.exit_code == 137
    assert r.billable
    assert r.stdout == "printed before the deadline\n"
    assert "KeyboardInterrupt" in r.stderr
    assert "time.sleep(60)" in r.stderr


@LANGS
async def test_timeout_sends_sigint_then_sigkill(shared: SharedScheduler, language: str) -> None:
    code = {
        "python": (
            "import signal, sys, time\n"
            "def on_int(*_):\n    print('got SIGINT', flush=True)\n"
            "signal.signal(signal.SIGINT, on_int)\n"
            "print('ready', flush=True)\n"
            "while True:\n    time.sleep(1)\n"
        ),
        "javascript": (
            "process.on('SIGINT', () => console.log('got SIGINT'));\n"
            "console.log('ready');\nsetInterval(() => {}, 1000);\n"
        ),
    }[language]
    r = await shared.run(language, code, timeout_s=1)
    assert r.termination is Termination.TIMEOUT, describe(r)
    assert r.exit_code == 137
    # SIGINT came first and was survived; only SIGKILL ended it.
    assert r.stdout == "ready\ngot SIGINT\n"


async def test_javascript_timeout_keeps_earlier_output(shared: SharedScheduler) -> None:
    code = "console.log('before');\nprocess.stderr.write('err before\\n');\nwhile (true) {}\n"
    r = await shared.run("javascript", code, timeout_s=1)
    assert r.termination is Termination.TIMEOUT, describe(r)
    assert r.exit_code == 137
    assert r.stdout == "before\n"
    assert r.stderr == "err before\n"


# -- isolation between runs ---------------------------------------------------------------------


@LANGS
async def test_files_and_background_processes_do_not_survive_a_run(
    shared: SharedScheduler, language: str
) -> None:
    marker = "leftover-" + secrets.token_hex(6)
    plant = {
        "python": (
            "import subprocess\n"
            f"open('/tmp/{marker}', 'w').write('x')\nopen('{marker}', 'w').write('x')\n"
            f"subprocess.Popen(['sh', '-c', 'exec sleep 300 # {marker}'], start_new_session=True,\n"
            "                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
            "print('planted')\n"
        ),
        "javascript": (
            "const fs = require('node:fs'), cp = require('node:child_process');\n"
            f"fs.writeFileSync('/tmp/{marker}', 'x');\nfs.writeFileSync('{marker}', 'x');\n"
            f"cp.spawn('sh', ['-c', 'exec sleep 300 # {marker}'], "
            "{ detached: true, stdio: 'ignore' }).unref();\n"
            "console.log('planted');\n"
        ),
    }[language]
    look = {
        "python": (
            "import os\n"
            f"print(os.path.exists('/tmp/{marker}'), os.path.exists('{marker}'))\n"
            "procs = []\n"
            "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
            "    try:\n        procs.append(open(f'/proc/{pid}/cmdline', 'rb').read())\n"
            "    except OSError:\n        pass\n"
            f"print(any(b'{marker}' in c for c in procs), len(procs) > 1)\n"
        ),
        "javascript": (
            "const fs = require('node:fs');\n"
            f"console.log(fs.existsSync('/tmp/{marker}'), fs.existsSync('{marker}'));\n"
            "const procs = fs.readdirSync('/proc').filter((p) => /^\\d+$/.test(p)).map((p) => {\n"
            "  try { return fs.readFileSync(`/proc/${p}/cmdline`, 'latin1'); } catch { return ''; }\n"
            "});\n"
            f"console.log(procs.some((c) => c.includes('{marker}')), procs.length > 1);\n"
        ),
    }[language]
    first = await shared.run(language, plant)
    assert_exited(first)
    assert first.stdout == "planted\n"
    second = await shared.run(language, look)
    assert_exited(second)
    assert second.sandbox_id != first.sandbox_id
    words = second.stdout.lower().split()
    # No file, no process from the first run; the scan itself saw processes (the control).
    assert words == ["false", "false", "false", "true"], second.stdout


@LANGS
async def test_sleeping_child_holding_stdout_does_not_delay_the_result(
    shared: SharedScheduler, language: str
) -> None:
    # The child keeps the output pipe open for a minute and writes to it after 2 s.
    child = "sleep 2; echo late; sleep 60"
    code = {
        "python": (
            f"import subprocess\nsubprocess.Popen(['sh', '-c', {child!r}])\nprint('done')\n"
        ),
        "javascript": (
            "require('node:child_process').spawn('sh', ['-c', "
            f"{child!r}], {{ stdio: 'inherit' }});\n"
            "console.log('done');\nprocess.exit(0);\n"
        ),
    }[language]
    r = await shared.run(language, code, timeout_s=10)
    # Had the child kept the run alive, this would be a timeout, or carry "late".
    assert_exited(r)
    assert r.stdout == "done\n"


# -- limits --------------------------------------------------------------------------------------


@LANGS
async def test_touched_gigabyte_is_oom(shared: SharedScheduler, language: str) -> None:
    code = {
        "python": "print('start', flush=True)\ndata = b'\\x01' * (1 << 30)\nprint('survived')\n",
        "javascript": "console.log('start');\nconst b = Buffer.alloc(2 ** 30, 1);\nconsole.log('survived');\n",
    }[language]
    r = await shared.run(language, code)
    assert r.termination is Termination.OOM, describe(r)
    assert r.exit_code == 137
    assert r.billable
    assert "survived" not in r.stdout


@LANGS
async def test_ten_megabytes_of_output_is_capped_exactly(
    shared: SharedScheduler, language: str
) -> None:
    code = {
        "python": (
            "import sys\nchunk = 'o' * 65536\n"
            "for i in range(160):\n"
            "    (sys.stdout if i % 2 else sys.stderr).write(chunk)\n"
        ),
        "javascript": (
            "const chunk = 'o'.repeat(65536);\n"
            "for (let i = 0; i < 160; i++) (i % 2 ? process.stdout : process.stderr).write(chunk);\n"
        ),
    }[language]
    r = await shared.run(language, code)
    assert r.termination is Termination.OUTPUT_LIMIT, describe(r)
    assert r.truncated
    assert r.exit_code == 137
    assert r.billable
    assert len(r.stdout.encode()) + len(r.stderr.encode()) == MIB
    assert set(r.stdout + r.stderr) == {"o"}


async def test_output_cap_never_splits_a_character(shared: SharedScheduler) -> None:
    # One ASCII byte, then 2-byte characters: the cap (an even number) falls mid-character.
    code = "import sys\nsys.stdout.write('a')\nfor _ in range(40):\n    sys.stdout.write('é' * 65536)\n"
    r = await shared.run("python", code)
    assert r.termination is Termination.OUTPUT_LIMIT, describe(r)
    assert len(r.stdout.encode()) == MIB - 1
    assert "\ufffd" not in r.stdout
    assert r.stdout.startswith("aé")


@LANGS
async def test_killing_pid_1_is_charged(shared: SharedScheduler, language: str) -> None:
    code = {
        # The pause lets the supervisor forward the output first: whatever is still in
        # the pipe when PID 1 dies dies with the sandbox.
        "python": (
            "import os, time\nprint('bye', flush=True)\ntime.sleep(0.5)\nos.kill(1, 9)\n"
            "time.sleep(5)\n"
        ),
        "javascript": (
            "console.log('bye');\n"
            "setTimeout(() => process.kill(1, 'SIGKILL'), 500);\nsetTimeout(() => {}, 5000);\n"
        ),
    }[language]
    r = await shared.run(language, code)
    assert r.termination is not Termination.SANDBOX_ERROR, describe(r)
    assert r.billable, describe(r)
    assert r.termination is Termination.SIGNAL, describe(r)
    assert r.exit_code == 137
    assert r.signal == "SIGKILL"
    assert r.stdout == "bye\n"


async def test_forged_exit_frame_on_pid1_stdout_is_ignored(shared: SharedScheduler) -> None:
    # A well-formed exit frame with a wrong nonce, written straight to the runner's stdout.
    code = (
        "import os, struct, time\n"
        "frame = b'X' + struct.pack('>I', 21) + b'\\0' * 16 + b'e' + struct.pack('>I', 0)\n"
        "fd = os.open('/proc/1/fd/1', os.O_WRONLY)\n"
        "os.write(fd, frame)\n"
        "print('still running', flush=True)\n"
        "raise SystemExit(9)\n"
    )
    r = await shared.run("python", code)
    # Either the forgery was ignored and the real report won, or the stream was
    # judged corrupt; never a clean exit 0.
    assert r.exit_code != 0, describe(r)
    assert r.billable
    if r.termination is Termination.EXITED:
        assert r.exit_code == 9
        assert r.stdout == "still running\n"


async def test_python_stdout_is_buffered_like_the_interpreters(shared: SharedScheduler) -> None:
    # `python3 main.py > pipe`: print() is block-buffered until exit, os.write(1) is not;
    # the buffered tail travels with the exit report, so check order and attributes.
    code = (
        "import os, sys\n"
        "print('a')\n"
        "os.write(1, b'b\\n')\n"
        "print(sys.stdout.fileno(), sys.stdout.encoding, sys.stdout.errors,\n"
        "      sys.stdout.name, sys.stdout.mode, sys.stdout.isatty(),\n"
        "      sys.stdout is sys.__stdout__, sys.stdout.buffer.raw.name)\n"
        "sys.stdout.buffer.write(b'c\\n')\n"
    )
    r = await shared.run("python", code)
    assert_exited(r)
    # What `python3 main.py | cat` prints in the same image (checked with docker run):
    # buffer.write() overtakes text still pending in the TextIOWrapper, as in CPython.
    assert r.stdout == "b\nc\na\n1 utf-8 surrogateescape <stdout> w False True <stdout>\n", (
        describe(r)
    )


async def test_python_replaced_stdout_and_big_tail_are_flushed(shared: SharedScheduler) -> None:
    code = (
        "import io, sys\n"
        "sys.stdout = io.TextIOWrapper(io.BufferedWriter(sys.stdout.buffer, 1 << 20), 'utf-8')\n"
        "sys.stdout.write('x' * 300000)\n"
        "sys.stdout.write('\\nend\\n')\n"
    )
    r = await shared.run("python", code)
    assert_exited(r)
    assert r.stdout == "x" * 300000 + "\nend\n", describe(r)[:300]


@LANGS
async def test_program_file_is_written_before_the_program_runs(
    shared: SharedScheduler, language: str
) -> None:
    code = {
        "python": "src = open(__file__).read()\nprint(len(src), src.startswith('src ='))\n",
        "javascript": "const src = require('fs').readFileSync(__filename, 'utf8');\n"
        "console.log(src.length, src.startsWith('const src ='));\n",
    }[language]
    r = await shared.run(language, code)
    assert_exited(r)
    assert r.stdout.split() == [str(len(code)), "True" if language == "python" else "true"]


@LANGS
async def test_long_program_arrives_whole(shared: SharedScheduler, language: str) -> None:
    # Longer than the loader's 64 KiB code buffer and than a pipe's capacity.
    filler = "x" * 100
    lines = {
        "python": [f"# {filler} {i}" for i in range(3000)]
        + ["print('end', len(open(__file__).read()))"],
        "javascript": [f"// {filler} {i}" for i in range(3000)]
        + ["console.log('end', require('fs').readFileSync(__filename, 'utf8').length)"],
    }[language]
    code = "\n".join(lines) + "\n"
    assert len(code) > 300_000
    r = await shared.run(language, code)
    assert_exited(r)
    assert r.stdout == f"end {len(code)}\n", describe(r)


@LANGS
async def test_junk_on_the_loaders_pipes_only_hurts_its_own_run(
    shared: SharedScheduler, language: str
) -> None:
    # fds 3 (exit report) and 4 (code) belong to the loader, so the program can reach them.
    code = {
        "python": "import os\nos.write(3, b'zz')\ntry:\n    os.write(4, b'junk')\n"
        "except OSError:\n    pass\nprint('done')\n",
        "javascript": "const fs = require('fs');\nfs.writeSync(3, 'zz');\nconsole.log('done');\n",
    }[language]
    r = await shared.run(language, code)
    # A result (no hang), charged; the program's own output may be what it cost.
    assert r.termination in (Termination.EXITED, Termination.SANDBOX_ERROR), describe(r)
    assert r.billable
    after = await shared.run(
        language, {"python": "print(5)", "javascript": "console.log(5)"}[language]
    )
    assert_exited(after)
    assert after.stdout == "5\n"


# -- concurrency and reuse -------------------------------------------------------------------------


async def test_sixteen_concurrent_runs_each_get_their_own_output(shared: SharedScheduler) -> None:
    tokens = [secrets.token_hex(8) for _ in range(16)]
    results: dict[int, RunResult] = {}

    async def one(i: int) -> None:
        language = "python" if i % 2 else "javascript"
        code = {
            "python": "import sys\ntoken = sys.stdin.read()\nprint(token * 3)\n",
            "javascript": "const t = require('node:fs').readFileSync(0, 'utf8');\nconsole.log(t.repeat(3));\n",
        }[language]
        results[i] = await shared.run(language, code, stdin=tokens[i])

    async with trio.open_nursery() as nursery:
        for i in range(16):
            nursery.start_soon(one, i)
    for i, token in enumerate(tokens):
        assert_exited(results[i])
        assert results[i].stdout == token * 3 + "\n"
    ids = [r.sandbox_id for r in results.values()]
    assert len(set(ids)) == 16


async def test_buffered_output_survives_an_exit_racing_the_report(shared: SharedScheduler) -> None:
    # The last buffered stdout travels with the exit report while the pipes close and
    # SIGCHLD arrives at once; a run longer than the supervisor's grace period (so the
    # pipes are watched) on a busy machine once lost it.  Many at once, several times.
    busy = "import time\nend = time.time() + 0.5\nwhile time.time() < end:\n    pass\n"
    for _round in range(3):
        results: dict[int, RunResult] = {}

        async def one(i: int, results: dict[int, RunResult]) -> None:
            code = f"import time\ntime.sleep(0.02)\nprint('line', {i})\n"
            results[i] = await shared.run("python", code)

        async with trio.open_nursery() as nursery:
            for _ in range(4):  # keep both cores busy, so supervisors wake late
                nursery.start_soon(shared.run, "python", busy)
            for i in range(8):
                nursery.start_soon(one, i, results)
        for i in range(8):
            assert_exited(results[i])
            assert results[i].stdout == f"line {i}\n", describe(results[i])


# -- destroy ---------------------------------------------------------------------------------------


@LANGS
async def test_destroy_lets_the_sandbox_end_by_itself(engine_ready: bool, language: str) -> None:
    """Hung up on after its run, the sandbox stops on its own: the engine never kills it.

    (Removing a running container costs the engine a kill, a runsc command and
    its waits: machine CPU every run would pay.)
    """
    seen: dict[str, list[str]] = {}
    destroyed: dict[str, trio.Event] = {}
    async with real_scheduler(pool_size=1) as sandboxes:
        backend = sandboxes.backend
        record = backend._record

        def spy(cid: str, action: str) -> None:
            seen.setdefault(cid, []).append(action)
            if action == "destroy":
                destroyed.setdefault(cid, trio.Event()).set()
            record(cid, action)

        backend._record = spy
        code = {"python": "print(1)", "javascript": "console.log(1)"}[language]
        r = await sandboxes.scheduler.run(RunRequest(language, code))
        assert_exited(r)
        await sandboxes.scheduler.wait_destroyed()
        with trio.fail_after(20):
            await destroyed.setdefault(r.sandbox_id, trio.Event()).wait()
        actions = seen[r.sandbox_id]
        assert "die" in actions, actions
        assert "kill" not in actions, actions
        assert actions.index("die") < actions.index("destroy"), actions


# -- restart of the process leaves no container behind ------------------------------------------


def _owned(client: Any, owner: str) -> set[str]:
    # The low-level list: no inspect per container, which races with removals.
    found = client.api.containers(all=True, filters={"label": f"{OWNER_LABEL}={owner}"})
    return {c["Id"] for c in found}


def _post_run(base_url: str, key: str, code: str, timeout_s: float = 60) -> httpx.Response:
    return httpx.post(
        base_url + "/run",
        json={"code": code, "language": "python"},
        headers={"Authorization": f"Bearer {key}"},
        timeout=timeout_s,
    )


@pytest.mark.postgres
def test_restart_after_kill_9_leaves_no_container_behind(
    engine_ready: bool, database_url: str, tmp_path: Path
) -> None:
    import docker

    client = docker.from_env(timeout=60)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    env = {"CINCH_POOL_PYTHON": "1", "CINCH_POOL_JAVASCRIPT": "1", "CINCH_START_CONCURRENCY": "2"}
    servers = []
    owner = ""
    try:
        first = start_live_server(database_url, data_dir, **env)
        servers.append(first)
        owner = (data_dir / "instance-id").read_text().strip()
        assert owner
        key = first.new_key()
        r = _post_run(first.base_url, key, "print(2 + 2)")
        assert r.status_code == 200, r.text
        assert r.json()["stdout"] == "4\n"
        # Its sandbox is destroyed after the answer: wait for that, or the snapshot
        # below may hold a container the engine is still removing at our request.
        deadline = time.monotonic() + 30
        while len(_owned(client, owner)) > 2 and time.monotonic() < deadline:
            time.sleep(0.2)

        # A run in flight when the process dies: its sandbox must not outlive it either.
        in_flight = threading.Thread(
            target=_safe_post,
            args=(first.base_url, key, "import time\ntime.sleep(30)"),
            daemon=True,
        )
        in_flight.start()
        deadline = time.monotonic() + 30
        while len(_owned(client, owner)) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        before = _owned(client, owner)
        assert len(before) >= 2, "nothing was running when the server was killed"

        os.kill(first.process.pid, signal.SIGKILL)
        first.process.wait(10)
        in_flight.join(30)
        # A removal the server asked for just before it died (a used sandbox, or a warm one
        # over target) is finished by the engine afterwards: let those settle, then what is
        # left is what nobody will remove but the next server.
        left = _settled(client, owner)
        assert len(left) >= 2, "the containers went away without clean-up"
        groups = _sandbox_groups(left)
        if any(root.is_dir() for root in SANDBOX_GROUP_ROOTS):  # CPU weights are on
            assert groups, "the sandboxes have no CPU groups to leave behind"

        second = start_live_server(database_url, data_dir, **env)
        servers.append(second)
        assert (data_dir / "instance-id").read_text().strip() == owner
        assert left.isdisjoint(_owned(client, owner)), "the old instance's containers remain"
        assert not [g for g in groups if g.exists()], "their CPU groups remain"
        r = _post_run(second.base_url, key, "print('again')")
        assert r.status_code == 200, r.text
        assert r.json()["stdout"] == "again\n"

        assert stop_live_server(second) == 0, second.log_tail()
        assert _owned(client, owner) == set()
    finally:
        for server in servers:
            stop_live_server(server)
        if owner:  # exactly this test's own instance
            for cid in _owned(client, owner):
                with contextlib.suppress(Exception):
                    client.api.remove_container(cid, force=True)
        client.close()


SANDBOX_GROUP_ROOTS = (
    Path("/sys/fs/cgroup/cinch-sandboxes"),  # cgroup v2
    Path("/sys/fs/cgroup/cpu/cinch-sandboxes"),  # v1
)


def _sandbox_groups(cids: set[str]) -> list[Path]:
    """The per-sandbox CPU groups (pool._cgroups) of ``cids`` that exist now."""
    return [root / cid for root in SANDBOX_GROUP_ROOTS for cid in cids if (root / cid).is_dir()]


def _settled(client, owner: str, quiet_s: float = 2.0, timeout_s: float = 30.0) -> set[str]:
    """The owner's containers once the set has not changed for ``quiet_s``."""
    deadline = time.monotonic() + timeout_s
    seen = _owned(client, owner)
    since = time.monotonic()
    while time.monotonic() - since < quiet_s and time.monotonic() < deadline:
        time.sleep(0.2)
        now = _owned(client, owner)
        if now != seen:
            seen, since = now, time.monotonic()
    return seen


def _safe_post(base_url: str, key: str, code: str) -> None:
    with contextlib.suppress(httpx.HTTPError):
        _post_run(base_url, key, code)
