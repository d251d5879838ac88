"""Code-interpreter runs against a real `cinch serve` (issue 18): files in and out,
args, env, timeoutMs, maxCredits, and hostile programs under out/.

Real gVisor, real Postgres, real HTTP on loopback; one server for the module.
"""

from __future__ import annotations

import base64
import json
import os
import struct
import subprocess
import time
import zlib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from api._store import hash_key
from tests.conftest import (
    LiveServer,
    _engine_state,
    fresh_database,
    need,
    start_live_server,
    stop_live_server,
)

pytestmark = [pytest.mark.gvisor, pytest.mark.postgres]

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def server(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    ok, reason = _engine_state()
    need(ok, reason)
    live = start_live_server(
        fresh_database(pg_url),
        tmp_path_factory.mktemp("cinch-interpreter"),
        CINCH_POOL_PYTHON="2",
        CINCH_POOL_JAVASCRIPT="1",
        CINCH_START_CONCURRENCY="2",
    )
    try:
        yield live
    finally:
        stop_live_server(live)


@pytest.fixture(scope="module")
def key(server: LiveServer) -> str:
    return server.new_key(1_000_000)


def run(server: LiveServer, key: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(
        server.base_url + "/run",
        json=body,
        headers={"Authorization": f"Bearer {key}", **headers},
        timeout=60,
    )


def balance(server: LiveServer, key: str) -> int:
    (row,) = server.query(
        "SELECT a.balance FROM accounts a JOIN api_keys k ON k.account_id = a.id "
        "WHERE k.key_hash = $1",
        hash_key(key),
    )
    return int(row["balance"])


def files_of(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["path"]: f for f in body["files"]}


def png_ok(data: bytes) -> tuple[int, int]:
    """Width and height of a PNG whose every chunk's CRC checks out."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    at = 8
    size = (0, 0)
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        kind = data[at + 4 : at + 8]
        chunk = data[at + 8 : at + 8 + length]
        (crc,) = struct.unpack(">I", data[at + 8 + length : at + 12 + length])
        assert zlib.crc32(kind + chunk) == crc, kind
        if kind == b"IHDR":
            size = struct.unpack(">II", chunk[:8])
        at += 12 + length
        if kind == b"IEND":
            break
    assert at == len(data)
    return size


# -- files in, args, env --------------------------------------------------------------


PY_READ = (
    "import os, sys\n"
    "print(open('data.csv').read(), end='')\n"
    "print(open('bin/blob.bin', 'rb').read().hex())\n"
    "print(sys.argv[1:])\n"
    "print(os.environ['GREETING'], os.environ['EMPTY'] == '')\n"
)
JS_READ = (
    "const fs = require('fs');\n"
    "process.stdout.write(fs.readFileSync('data.csv', 'utf8'));\n"
    "console.log(fs.readFileSync('bin/blob.bin').toString('hex'));\n"
    "console.log(JSON.stringify(process.argv.slice(2)));\n"
    "console.log(process.env.GREETING, process.env.EMPTY === '');\n"
)


@pytest.mark.parametrize("language", ["python", "javascript"])
def test_files_args_and_env_arrive(server: LiveServer, key: str, language: str) -> None:
    body = {
        "language": language,
        "code": PY_READ if language == "python" else JS_READ,
        "files": [
            {"path": "data.csv", "content": "a,b\n1,2\nhé,ü\n"},
            {
                "path": "bin/blob.bin",
                "content": base64.b64encode(b"\x00\xff\x10").decode(),
                "encoding": "base64",
            },
        ],
        "args": ["one", "two words", "ünï"],
        "env": {"GREETING": "hello there", "EMPTY": ""},
    }
    r = run(server, key, body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["exitCode"] == 0, out
    lines = out["stdout"].splitlines()
    assert lines[:3] == ["a,b", "1,2", "hé,ü"]
    assert lines[3] == "00ff10"
    if language == "python":
        assert lines[4] == "['one', 'two words', 'ünï']"
        assert lines[5] == "hello there True"
    else:
        assert json.loads(lines[4]) == ["one", "two words", "ünï"]
        assert lines[5] == "hello there true"
    assert out["files"] == []
    assert out["filesTruncated"] is False


def test_plain_run_answer_has_empty_files(server: LiveServer, key: str) -> None:
    r = run(server, key, {"code": "import sys; print(sys.argv)"})
    assert r.status_code == 200, r.text
    assert r.json()["stdout"] == "['main.py']\n"
    assert r.json()["files"] == []


# -- files out --------------------------------------------------------------------------


def test_out_files_come_back(server: LiveServer, key: str) -> None:
    code = (
        "import os, zlib, struct\n"
        "open('out/result.txt', 'w').write('forty-two\\n')\n"
        "os.makedirs('out/deep/er')\n"
        "open('out/deep/er/data.json', 'w').write('{\"a\": 1}')\n"
        "open('out/raw.bin', 'wb').write(bytes(range(256)))\n"
        "def chunk(k, d): return struct.pack('>I', len(d)) + k + d + struct.pack('>I', zlib.crc32(k + d))\n"
        "png = b'\\x89PNG\\r\\n\\x1a\\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', 1, 1, 8, 0, 0, 0, 0))"
        " + chunk(b'IDAT', zlib.compress(b'\\x00\\x80')) + chunk(b'IEND', b'')\n"
        "open('out/dot.png', 'wb').write(png)\n"
        "open('not-out.txt', 'w').write('stays')\n"
    )
    r = run(server, key, {"code": code})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["exitCode"] == 0, out
    files = files_of(out)
    assert sorted(files) == [
        "out/deep/er/data.json",
        "out/dot.png",
        "out/raw.bin",
        "out/result.txt",
    ]
    assert base64.b64decode(files["out/result.txt"]["content"]) == b"forty-two\n"
    assert files["out/result.txt"]["mimeType"] == "text/plain"
    assert files["out/result.txt"]["size"] == 10
    assert base64.b64decode(files["out/raw.bin"]["content"]) == bytes(range(256))
    assert files["out/raw.bin"]["mimeType"] == "application/octet-stream"
    assert files["out/deep/er/data.json"]["mimeType"] == "application/json"
    assert png_ok(base64.b64decode(files["out/dot.png"]["content"])) == (1, 1)
    assert files["out/dot.png"]["mimeType"] == "image/png"
    assert out["filesTruncated"] is False


def test_javascript_out_files(server: LiveServer, key: str) -> None:
    code = "require('fs').writeFileSync('out/hello.txt', 'from node');\n"
    r = run(server, key, {"language": "javascript", "code": code})
    assert r.status_code == 200, r.text
    (f,) = r.json()["files"]
    assert f["path"] == "out/hello.txt"
    assert base64.b64decode(f["content"]) == b"from node"


def test_out_files_over_the_limits_are_listed_without_content(server: LiveServer, key: str) -> None:
    code = (
        "for i in range(40):\n    open(f'out/f{i:02}.txt', 'w').write(str(i))\n"
        "open('out/zz-big.bin', 'wb').write(b'x' * (6 * 1024 * 1024))\n"
    )
    r = run(server, key, {"code": code})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["filesTruncated"] is True
    with_content = [f for f in out["files"] if f["content"] is not None]
    without = [f for f in out["files"] if f["content"] is None]
    assert len(with_content) == 32
    assert [f["path"] for f in with_content] == [f"out/f{i:02}.txt" for i in range(32)]
    assert {f["path"] for f in without} == {f"out/f{i:02}.txt" for i in range(32, 40)} | {
        "out/zz-big.bin"
    }
    assert files_of(out)["out/zz-big.bin"]["size"] == 6 * MIB


def test_files_written_before_a_timeout_still_come_back(server: LiveServer, key: str) -> None:
    code = (
        "import time\nopen('out/partial.txt', 'w').write('so far')\nwhile True: time.sleep(0.05)\n"
    )
    r = run(server, key, {"code": code, "timeoutMs": 700})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["timedOut"] is True
    assert base64.b64decode(files_of(out)["out/partial.txt"]["content"]) == b"so far"


# -- hostile programs under out/ --------------------------------------------------------


def test_symlinks_and_special_files_in_out_are_skipped(server: LiveServer, key: str) -> None:
    code = (
        "import os\n"
        "os.symlink('/etc/passwd', 'out/passwd')\n"
        "os.symlink('/proc/1/environ', 'out/environ')\n"
        "os.symlink('/', 'out/root')\n"
        "os.mkfifo('out/fifo')\n"
        "os.link('main.py', 'out/hard.py')\n"  # a hard link to our own file is a regular file
        "open('out/ok.txt', 'w').write('ok')\n"
        "print('done')\n"
    )
    r = run(server, key, {"code": code})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["stdout"] == "done\n", out
    files = files_of(out)
    assert set(files) == {"out/ok.txt", "out/hard.py"}
    assert base64.b64decode(files["out/hard.py"]["content"]) == code.encode()
    blob = json.dumps(out)
    assert "root:" not in blob
    assert "PATH=" not in blob


def test_out_replaced_by_a_symlink_returns_nothing(server: LiveServer, key: str) -> None:
    code = "import os, shutil\nshutil.rmtree('out')\nos.symlink('/etc', 'out')\nprint('swapped')\n"
    r = run(server, key, {"code": code})
    assert r.status_code == 200, r.text
    assert r.json()["stdout"] == "swapped\n"
    assert r.json()["files"] == []


def test_a_sparse_10_gb_file_is_listed_not_read(server: LiveServer, key: str) -> None:
    code = (
        "with open('out/sparse.bin', 'wb') as f:\n"
        "    try:\n        f.truncate(10 * 1024 ** 3)\n        print('10 GB')\n"
        # gVisor's tmpfs refuses a file larger than /tmp (EFBIG): then as large as it takes.
        "    except OSError:\n        f.truncate(60 * 1024 ** 2)\n        print('60 MB')\n"
    )
    r = run(server, key, {"code": code})
    assert r.status_code == 200, r.text
    out = r.json()
    size = {"10 GB\n": 10 * 1024**3, "60 MB\n": 60 * 1024**2}[out["stdout"]]
    assert out["files"] == [
        {
            "path": "out/sparse.bin",
            "size": size,
            "mimeType": "application/octet-stream",
            "content": None,
        }
    ]
    assert out["filesTruncated"] is True
    assert out["durationMs"] < 2000, out


def test_ten_thousand_files(server: LiveServer, key: str) -> None:
    code = (
        "import os\n"
        "os.mkdir('out/many')\n"
        "for i in range(10000):\n    open(f'out/many/{i:05}', 'w').close()\n"
        "print('wrote')\n"
    )
    r = run(server, key, {"code": code})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["stdout"] == "wrote\n", out
    assert out["filesTruncated"] is True
    files = out["files"]
    # Bounded, in name order: 32 with content, then listed up to 4x the file limit.
    assert len(files) == 128
    assert [f["path"] for f in files] == [f"out/many/{i:05}" for i in range(128)]
    assert all(f["content"] == "" for f in files[:32])
    assert all(f["content"] is None for f in files[32:])
    # The service is fine afterwards.
    assert httpx.get(server.base_url + "/healthz", timeout=5).status_code == 200
    again = run(server, key, {"code": "print(2 + 2)"})
    assert again.status_code == 200
    assert again.json()["stdout"] == "4\n"


def test_a_process_left_behind_cannot_change_the_files(server: LiveServer, key: str) -> None:
    # A child keeps rewriting out/x after the program ends: it is killed first.
    code = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    while True:\n"
        "        open('out/x', 'w').write('child' * 1000)\n"
        "open('out/x', 'w').write('parent')\n"
        "time.sleep(0.2)\n"
        "open('out/x', 'w').write('parent')\n"
    )
    r = run(server, key, {"code": code})
    assert r.status_code == 200, r.text
    (f,) = r.json()["files"]
    assert base64.b64decode(f["content"]) in (b"parent", b"child" * 1000, b"")


# -- per-request limits -----------------------------------------------------------------


@pytest.mark.parametrize("language", ["python", "javascript"])
def test_timeout_ms_stops_a_loop_at_about_half_a_second(
    server: LiveServer, key: str, language: str
) -> None:
    code = "while True:\n    pass\n" if language == "python" else "while (true) {}\n"
    r = run(server, key, {"language": language, "code": code, "timeoutMs": 500})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["timedOut"] is True, out
    assert out["termination"] == "timeout", out
    assert 500 <= out["durationMs"] < 1500, out
    assert out["creditsCharged"] == out["durationMs"]


def test_max_credits_stops_a_loop_and_caps_the_charge(server: LiveServer, key: str) -> None:
    fresh = server.new_key(10_000)
    before = balance(server, fresh)
    r = run(server, fresh, {"code": "while True:\n    pass\n", "maxCredits": 50})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["termination"] == "credit_limit", out
    assert out["timedOut"] is False
    assert 0 < out["creditsCharged"] <= 50, out
    assert before - balance(server, fresh) == out["creditsCharged"]


def test_max_credits_above_the_cost_changes_nothing(server: LiveServer, key: str) -> None:
    r = run(server, key, {"code": "print('cheap')", "maxCredits": 5000})
    assert r.status_code == 200, r.text
    assert r.json()["termination"] == "exited"
    assert r.json()["stdout"] == "cheap\n"


def test_max_credits_lets_a_small_account_run(server: LiveServer, key: str) -> None:
    # The first hold is at most maxCredits: 60 credits are enough for a 50-credit run.
    poor = server.new_key(60)
    r = run(server, poor, {"code": "print(1)", "maxCredits": 50})
    assert r.status_code == 200, r.text
    assert r.json()["stdout"] == "1\n"


# -- bad input: clear 400/413, nothing charged --------------------------------------------


BAD = [
    ({"files": [{"path": "../etc/x", "content": ""}]}, 400, '".." segments'),
    ({"files": [{"path": "a/../../x", "content": ""}]}, 400, '".." segments'),
    ({"files": [{"path": "/etc/passwd", "content": ""}]}, 400, "relative"),
    ({"files": [{"path": "a\u0000b", "content": ""}]}, 400, "NUL"),
    ({"files": [{"path": "x" * 256, "content": ""}]}, 400, "at most 255"),
    ({"files": [{"path": "a", "content": ""}, {"path": "a", "content": ""}]}, 400, "twice"),
    ({"files": [{"path": "a", "content": ""}, {"path": "a/b", "content": ""}]}, 400, "is a file"),
    ({"files": [{"path": "out/x", "content": ""}]}, 400, "out/"),
    ({"files": [{"path": "main.py", "content": ""}]}, 400, "the program itself"),
    ({"files": [{"path": "a", "content": "!!!", "encoding": "base64"}]}, 400, "base64"),
    ({"files": [{"path": "a", "content": "x", "encoding": "latin-1"}]}, 400, "encoding"),
    ({"files": [{"path": "a"}]}, 400, '"content"'),
    ({"files": "data.csv"}, 400, '"files"'),
    ({"files": [{"path": f"f{i}", "content": ""} for i in range(65)]}, 413, "at most 64"),
    (
        {
            "files": [
                {
                    "path": "big",
                    "content": base64.b64encode(b"\0" * (10 * MIB + 1)).decode(),
                    "encoding": "base64",
                }
            ]
        },
        413,
        "10485760",
    ),
    ({"args": "one"}, 400, '"args"'),
    ({"args": [1, 2]}, 400, '"args"'),
    ({"args": ["x"] * 65}, 413, "at most 64"),
    ({"args": ["x" * 4097]}, 413, "4096"),
    ({"env": {"PATH": "/tmp"}}, 400, "reserved"),
    ({"env": {"LD_PRELOAD": "/tmp/x.so"}}, 400, "reserved"),
    ({"env": {"PYTHONPATH": "/tmp"}}, 400, "reserved"),
    ({"env": {"NODE_OPTIONS": "--x"}}, 400, "reserved"),
    ({"env": {"1BAD": "x"}}, 400, "variable name"),
    ({"env": {"A": 1}}, 400, "string"),
    ({"env": ["A=1"]}, 400, '"env"'),
    ({"env": {f"V{i}": "" for i in range(65)}}, 413, "at most 64"),
    ({"env": {"BIG": "x" * 70000}}, 413, "65536"),
    ({"timeoutMs": 0}, 400, "timeoutMs"),
    ({"timeoutMs": 10001}, 400, "10000"),
    ({"timeoutMs": 1.5}, 400, "timeoutMs"),
    ({"timeoutMs": "500"}, 400, "timeoutMs"),
    ({"maxCredits": 0}, 400, "maxCredits"),
    ({"maxCredits": True}, 400, "maxCredits"),
]


def test_bad_fields_are_refused_clearly_and_cost_nothing(server: LiveServer, key: str) -> None:
    fresh = server.new_key(10_000)
    for extra, status, words in BAD:
        r = run(server, fresh, {"code": "print(1)", **extra})
        assert r.status_code == status, (extra, r.status_code, r.text[:300])
        assert words in r.json()["error"], (extra, r.json())
    assert balance(server, fresh) == 10_000
    assert (
        server.query(
            "SELECT count(*) AS n FROM runs r JOIN api_keys k ON k.account_id = r.account_id "
            "WHERE k.key_hash = $1",
            hash_key(fresh),
        )[0]["n"]
        == 0
    )


def test_idempotency_covers_the_new_fields(server: LiveServer, key: str) -> None:
    body = {"code": "import sys; print(sys.argv[1])", "args": ["first"]}
    idem = {"Idempotency-Key": "interp-" + os.urandom(6).hex()}
    a = run(server, key, body, **idem)
    b = run(server, key, body, **idem)
    assert a.status_code == b.status_code == 200
    assert b.headers.get("Idempotent-Replayed") == "true"
    assert a.json() == b.json()
    c = run(server, key, {**body, "args": ["second"]}, **idem)
    assert c.status_code == 409, c.text


def test_no_container_left_behind(server: LiveServer, key: str) -> None:
    owner = (server.data_dir / "instance-id").read_text().strip()
    # Only the warm pools (2 + 1) once the last runs' sandboxes are destroyed and replaced.
    deadline = time.monotonic() + 30
    while True:
        listed = subprocess.run(
            ["docker", "ps", "-aq", "--filter", f"label=cinch.owner={owner}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        if len(listed) <= 3 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert len(listed) <= 3, listed


# -- the data stack: the issue's own example ---------------------------------------------


def test_pandas_reads_a_csv_and_a_chart_comes_back_as_png(server: LiveServer, key: str) -> None:
    code = (
        "import pandas as pd\n"
        "import matplotlib.pyplot as plt\n"
        "df = pd.read_csv('sales.csv')\n"
        "print(df['units'].sum())\n"
        "df.plot(x='month', y='units', kind='bar')\n"
        "plt.savefig('out/chart.png')\n"
        "plt.figure(); plt.plot([1, 2, 3])\n"  # left open: comes back as out/figure-1.png
    )
    csv = "month,units\njan,3\nfeb,5\nmar,8\n"
    r = run(server, key, {"code": code, "files": [{"path": "sales.csv", "content": csv}]})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["exitCode"] == 0, out["stderr"][-2000:]
    assert out["stdout"] == "16\n"
    assert out["stderr"] == ""
    files = files_of(out)
    # Both figures were still open at the end: df.plot's (also saved by the program)
    # and the second; figure-N counts the figures the run saved, from 1.
    assert sorted(files) == ["out/chart.png", "out/figure-1.png", "out/figure-2.png"]
    for f in files.values():
        assert f["mimeType"] == "image/png"
        width, height = png_ok(base64.b64decode(f["content"]))
        assert width > 100
        assert height > 100


def test_plt_show_saves_each_figure(server: LiveServer, key: str) -> None:
    code = (
        "import matplotlib.pyplot as plt\n"
        "plt.plot([1, 4, 9]); plt.show()\n"
        "plt.bar(['a', 'b'], [1, 2]); plt.show()\n"
        "print(plt.get_fignums())\n"
    )
    r = run(server, key, {"code": code})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["stdout"] == "[]\n", out
    assert sorted(files_of(out)) == ["out/figure-1.png", "out/figure-2.png"]

