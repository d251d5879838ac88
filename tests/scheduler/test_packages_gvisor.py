"""The packages of issue 18, in real gVisor sandboxes: the data stack imports, matplotlib's
figures come out as PNG files in out/, Node's packages load both ways, and the operator's
pre-imports are loaded while warm.

Runs go through the real scheduler (``SharedScheduler`` of test_runs_gvisor); the
pre-import tests start sandboxes with the backend directly, labelled with the session's
owner and destroyed by each test.
"""

from __future__ import annotations

import base64
import json
import os
import struct
import zlib
from collections.abc import Iterator

import pytest
import trio

from pool import DockerBackend, DockerClient, Exited, Gone, Output, SandboxStartError
from pool._images import current_tags
from pool._packages import NODE_LOCK, installed_packages
from scheduler import Termination
from tests.conftest import TEST_OWNER
from tests.scheduler.test_runs_gvisor import SharedScheduler, describe

pytestmark = pytest.mark.gvisor

# Imports under ptrace on a busy 2-core machine take seconds: give them room.
SLOW_RUN_S = 60.0


@pytest.fixture(scope="module")
def shared(engine_ready: bool) -> Iterator[SharedScheduler]:
    with SharedScheduler(queue_timeout_s=60, max_run_timeout_s=SLOW_RUN_S) as s:
        yield s


def _versions(language: str) -> dict[str, str]:
    return {p.name: p.version for p in installed_packages(language)}


async def test_the_python_data_stack_imports(shared: SharedScheduler) -> None:
    code = (
        "import json, time\n"
        "t0 = time.perf_counter()\n"
        "import numpy, pandas, scipy, sklearn, matplotlib, sympy, PIL, networkx, yaml, bs4\n"
        "import tabulate, seaborn, statsmodels.api, openpyxl, xlrd, lxml.etree, tqdm, dateutil, pytz\n"
        "import scipy.stats, sklearn.linear_model\n"
        "ms = round((time.perf_counter() - t0) * 1000)\n"
        "import io\n"
        "df = pandas.read_csv(io.StringIO('x,y\\n1,2\\n2,4\\n3,6\\n'))\n"
        "fit = sklearn.linear_model.LinearRegression().fit(df[['x']], df['y'])\n"
        "print(json.dumps({'ms': ms, 'slope': round(float(fit.coef_[0]), 6),\n"
        "  'mean': float(numpy.mean(df.y)), 'solve': str(sympy.solve('x**2 - 4')),\n"
        "  'p': round(float(scipy.stats.norm.cdf(0)), 3),\n"
        "  'table': tabulate.tabulate([[1, 2]]),\n"
        "  'yaml': yaml.safe_load('a: 1'), 'soup': bs4.BeautifulSoup('<b>hi</b>', 'lxml').b.text,\n"
        "  'versions': {m.__name__: m.__version__ for m in (numpy, pandas, scipy, sklearn,\n"
        "               matplotlib, sympy, PIL, networkx, yaml, bs4, seaborn)}}))\n"
    )
    r = await shared.run("python", code, timeout_s=SLOW_RUN_S)
    assert r.termination is Termination.EXITED, describe(r)
    assert r.exit_code == 0, describe(r)
    assert r.stderr == "", describe(r)
    out = json.loads(r.stdout)
    assert out["slope"] == 2.0
    assert out["mean"] == 4.0
    assert out["solve"] == "[-2, 2]"
    assert out["p"] == 0.5
    assert out["yaml"] == {"a": 1}
    assert out["soup"] == "hi"
    locked = _versions("python")
    names = {"sklearn": "scikit-learn", "PIL": "pillow", "yaml": "pyyaml", "bs4": "beautifulsoup4"}
    for module, version in out["versions"].items():
        assert locked[names.get(module, module)] == version, (module, version)
    print(f"importing the stack took {out['ms']} ms inside the sandbox")


def _png_size(data: bytes) -> tuple[int, int]:
    """Width and height of a PNG, after checking its signature and header chunk's CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", data[:16]
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR"
    assert length == 13
    body = data[16 : 16 + length]
    (crc,) = struct.unpack(">I", data[16 + length : 20 + length])
    assert crc == zlib.crc32(kind + body)
    assert data.endswith(b"IEND\xaeB`\x82")
    width, height = struct.unpack(">II", body[:8])
    return width, height


async def test_matplotlib_figures_come_out_as_png_files(shared: SharedScheduler) -> None:
    code = (
        "import base64, json, os, sys, time\n"
        "t0 = time.perf_counter()\n"
        "import matplotlib.pyplot as plt\n"
        "plt.plot([1, 4, 9, 16]); plt.title('squares')\n"
        "plt.show()\n"
        "first_png_ms = round((time.perf_counter() - t0) * 1000)\n"
        "assert plt.get_fignums() == []  # show() closed it\n"
        "fig, ax = plt.subplots(figsize=(4, 3)); ax.bar(['a', 'b'], [3, 5])\n"
        "plt.figure()\n"
        "# the loader will call this when the program ends (files out: issue 18)\n"
        "import cinch_matplotlib\n"
        "saved = cinch_matplotlib.save_open_figures()\n"
        "cfg = os.environ['MPLCONFIGDIR']\n"
        "print(json.dumps({'backend': plt.get_backend(), 'saved': saved,\n"
        "  'out': sorted(os.listdir('out')), 'first_png_ms': first_png_ms,\n"
        "  'fontlist': {n: os.readlink(os.path.join(cfg, n)) for n in os.listdir(cfg)},\n"
        "  'png': {n: base64.b64encode(open('out/' + n, 'rb').read()).decode()\n"
        "          for n in sorted(os.listdir('out'))}}))\n"
    )
    r = await shared.run("python", code, timeout_s=SLOW_RUN_S)
    assert r.termination is Termination.EXITED, describe(r)
    assert r.exit_code == 0, describe(r)
    # No "Matplotlib is building the font cache" or "created a temporary cache directory".
    assert r.stderr == "", describe(r)
    out = json.loads(r.stdout)
    assert out["backend"] == "module://cinch_matplotlib"
    assert out["out"] == ["figure-1.png", "figure-2.png", "figure-3.png"]
    assert out["saved"] == ["/tmp/work/out/figure-2.png", "/tmp/work/out/figure-3.png"]
    sizes = {name: _png_size(base64.b64decode(data)) for name, data in out["png"].items()}
    assert sizes == {
        "figure-1.png": (640, 480),
        "figure-2.png": (400, 300),
        "figure-3.png": (640, 480),
    }
    # The font list is the image's, linked in: matplotlib did not rebuild it.
    assert list(out["fontlist"].values()) == [
        f"/opt/cinch/matplotlib/{name}" for name in out["fontlist"]
    ]
    assert list(out["fontlist"])
    assert all(n.startswith("fontlist-v") for n in out["fontlist"])
    print(f"first PNG (import pyplot, plot, show) took {out['first_png_ms']} ms")


async def test_saving_figures_imports_nothing_without_pyplot(shared: SharedScheduler) -> None:
    code = (
        "import sys, cinch_matplotlib\n"
        "print(cinch_matplotlib.save_open_figures(), 'matplotlib' in sys.modules)\n"
    )
    r = await shared.run("python", code)
    assert r.exit_code == 0, describe(r)
    assert r.stdout == "[] False\n", describe(r)


NODE_PROGRAMS = {
    "require": (
        "const _ = require('lodash'); const dayjs = require('dayjs');\n"
        "const Papa = require('papaparse'); const Decimal = require('decimal.js');\n"
        "const { v4 } = require('uuid');\n"
        "const yaml = require('js-yaml');\n"
    ),
    "import": (
        "import _ from 'lodash'; import dayjs from 'dayjs'; import Papa from 'papaparse';\n"
        "import Decimal from 'decimal.js';\n"
        "import { v4 } from 'uuid'; import yaml from 'js-yaml';\n"
    ),
}
NODE_CHECK = (
    "console.log(JSON.stringify([_.chunk([1, 2, 3], 2), dayjs('2024-03-05').format('DD/MM/YYYY'),\n"
    "  Papa.parse('a,b\\n1,2').data, new Decimal('0.1').plus('0.2').toString(),\n"
    "  v4().length, yaml.load('k: [1, 2]'),\n"
    "  require_or_import]));\n"
)


@pytest.mark.parametrize("style", ["require", "import"])
async def test_node_packages_load(shared: SharedScheduler, style: str) -> None:
    code = NODE_PROGRAMS[style] + NODE_CHECK.replace("require_or_import", repr(style))
    r = await shared.run("javascript", code, timeout_s=SLOW_RUN_S)
    assert r.exit_code == 0, describe(r)
    assert r.stderr == "", describe(r)
    assert json.loads(r.stdout) == [
        [[1, 2], [3]],
        "05/03/2024",
        [["a", "b"], ["1", "2"]],
        "0.3",
        36,
        {"k": [1, 2]},
        style,
    ]


async def test_every_node_package_loads_both_ways(shared: SharedScheduler) -> None:
    # Each of package.json's packages by require() and by import(): an ES module build
    # that opens too many files at once (the sandbox allows 256) fails here.
    names = sorted(json.loads(NODE_LOCK.with_name("package.json").read_text())["dependencies"])
    code = (
        f"const names = {json.dumps(names)};\n"
        "const got = {};\n"
        "for (const n of names) got[n] = [typeof require(n)];\n"
        "(async () => {\n"
        "  for (const n of names) { const m = await import(n); got[n].push(typeof (m.default ?? m)); }\n"
        "  console.log(JSON.stringify(got));\n"
        "})();\n"
    )
    r = await shared.run("javascript", code, timeout_s=SLOW_RUN_S)
    assert r.exit_code == 0, describe(r)
    got = json.loads(r.stdout)
    assert sorted(got) == names
    for name, (required, imported) in got.items():
        assert required in ("function", "object"), (name, required)
        assert imported in ("function", "object"), (name, imported)


# -- CINCH_PYTHON_PREIMPORT ------------------------------------------------------------


async def _run_once(backend: DockerBackend, code: str) -> tuple[str, str]:
    sandbox = await backend.start_sandbox("python", current_tags()["python"])
    out = {"stdout": b"", "stderr": b""}
    try:
        with trio.fail_after(SLOW_RUN_S):
            await sandbox.send_run(code.encode(), b"", os.urandom(16), 1 << 20)
            while True:
                event = await sandbox.receive_event()
                if isinstance(event, Output):
                    out[event.stream] += event.data
                elif isinstance(event, Exited | Gone):
                    break
    finally:
        await backend.destroy(sandbox)
    return out["stdout"].decode(), out["stderr"].decode()


def _backend(client: DockerClient, preimport: str) -> DockerBackend:
    return DockerBackend(
        client,
        owner=TEST_OWNER,
        runtimes={"python": "runsc-ptrace"},
        env={"python": {"CINCH_PREIMPORT": preimport}},
    )


async def test_preimported_modules_are_loaded_before_the_run(engine_ready: bool) -> None:
    from pool import socket_path_from_env

    async with DockerClient(socket_path_from_env()) as client:
        stdout, stderr = await _run_once(
            _backend(client, "numpy,matplotlib.pyplot"),
            "import os, sys\n"
            "print(sorted(m for m in ('numpy', 'pandas', 'matplotlib.pyplot') if m in sys.modules),"
            " 'CINCH_PREIMPORT' in os.environ)\n",
        )
    assert (stdout, stderr) == ("['matplotlib.pyplot', 'numpy'] False\n", "")


async def test_a_preimport_that_fails_fails_the_warm_up(engine_ready: bool) -> None:
    from pool import socket_path_from_env

    async with DockerClient(socket_path_from_env()) as client:
        backend = _backend(client, "numpy,no_such_module")
        with pytest.raises(SandboxStartError, match="before it was ready"):
            await backend.start_sandbox("python", current_tags()["python"])
