"""A real 3-node Docker Swarm on this machine: agents as a global service, routing across nodes.

SCALE-OUT.md section 6: three network namespaces, a dockerd each, a switch
namespace between them.  The images are loaded on every node with
``docker save | docker load``; the agent runs as a ``--mode global --network
host`` Swarm service, one per node, each driving its own node's engine (its
socket bind-mounted by node id), from this checkout (bind-mounted, with the
venv's packages on Debian's Python 3.11 in the hardened base image).  A
``cinch api`` runs inside node 1's namespace and routes across the nodes.

Then a partition drill: node 3's link goes down; the API routes around it
within 1 s and runs go on; the link comes back and so does node 3.
Everything the bed made is removed by its own names at the end.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import CI, REPO, _engine_state, fresh_database, need
from tests.swarm.testbed import SwarmBed, in_netns, leftovers, swarm_bed

pytestmark = [pytest.mark.gvisor, pytest.mark.postgres, pytest.mark.slow]

TOKEN = secrets.token_urlsafe(24)
AGENT_PORT = 8081
API_PORT = 8080
SITE = (
    Path(sys.prefix)
    / "lib"
    / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    / "site-packages"
)


def _prerequisites(pg_url: str) -> None:
    ok, reason = _engine_state()
    need(ok, reason)
    need(os.geteuid() == 0, "the Swarm test bed needs root (network namespaces, dockerd)")
    for tool in ("ip", "nsenter", "dockerd", "docker"):
        need(shutil.which(tool) is not None, f"{tool} is missing")
    # The API runs inside a node's namespace: the database must be reachable from there,
    # which a unix socket is (a loopback TCP address of the host would not be).
    need("host=/" in pg_url or "@/" in pg_url, "the test database must listen on a unix socket")


def _agent_service(bed: SwarmBed, image: str) -> None:
    by_id = bed.base / "by-id"
    by_id.mkdir(parents=True, exist_ok=True)
    for node in bed.nodes:
        (by_id / f"{node.node_id}.sock").symlink_to(node.socket)
        (bed.base / "data" / node.node_id).mkdir(parents=True, exist_ok=True)
    bed.service = f"{bed.prefix}-agent"
    env = {
        "CINCH_AGENT_TOKEN": TOKEN,
        "CINCH_HOST": "0.0.0.0",
        "CINCH_PORT": str(AGENT_PORT),
        "CINCH_DATA_DIR": "/var/lib/cinch-agent",
        "CINCH_POOL_PYTHON": "1",
        "CINCH_POOL_MAX_PYTHON": "2",
        "CINCH_POOL_JAVASCRIPT": "0",
        "CINCH_POOL_MAX_JAVASCRIPT": "0",
        "CINCH_START_CONCURRENCY": "1",
        # The agent's container sees no host cgroup tree to give sandboxes weights in.
        "CINCH_CPU_WEIGHTS": "false",
        "PYTHONPATH": f"{REPO}:{SITE}",
        "HOME": "/tmp",
    }
    mounts = [
        f"type=bind,source={by_id}/{{{{.Node.ID}}}}.sock,target=/var/run/docker.sock",
        f"type=bind,source={bed.base / 'data'}/{{{{.Node.ID}}}},target=/var/lib/cinch-agent",
        f"type=bind,source={REPO},target={REPO},readonly",
        f"type=bind,source={SITE},target={SITE},readonly",
    ]
    args = ["service", "create", "--detach", "--name", bed.service, "--mode", "global"]
    args += ["--network", "host", "--no-resolve-image", "--workdir", str(REPO)]
    args += ["--label", f"cinch.testbed={bed.prefix}"]
    args += ["--container-label", f"cinch.testbed={bed.prefix}"]
    args += ["--stop-grace-period", "20s", "--restart-delay", "1s"]
    for m in mounts:
        args += ["--mount", m]
    for k, v in env.items():
        args += ["--env", f"{k}={v}"]
    args += ["--entrypoint", "/usr/bin/python3", image, "-m", "api", "agent"]
    bed.nodes[0].docker(*args)


def _get(netns: str, url: str, **kw: object) -> httpx.Response:
    return in_netns(netns, lambda: httpx.get(url, timeout=3, **kw))  # type: ignore[arg-type]


def _wait(netns: str, url: str, timeout_s: float, what: str, log: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if _get(netns, url).status_code == 200:
                return
        time.sleep(0.3)
    raise AssertionError(f"{what} not ready at {url}\n{log}")


def _views(netns: str, api: str) -> dict[str, bool]:
    body = _get(netns, api + "/readyz").json()
    return {a["url"]: a["up"] for a in body["checks"]["agents"]["agents"]}


def _post(netns: str, api: str, key: str, code: str) -> httpx.Response:
    return in_netns(
        netns,
        lambda: httpx.post(
            api + "/run",
            json={"code": code},
            headers={"Authorization": f"Bearer {key}"},
            timeout=60,
        ),
    )


def test_routing_across_swarm_nodes_and_a_partition(pg_url: str, tmp_path: Path) -> None:
    _prerequisites(pg_url)
    from pool import socket_path_from_env
    from pool._images import current_tags, plan
    from pool._languages import LANGUAGES
    from tests.conftest import LiveServer

    tags = list(current_tags().values())
    base_image = plan(LANGUAGES["python"]).base_tag
    database_url = fresh_database(pg_url)
    api_process: subprocess.Popen[bytes] | None = None
    prefix = ""
    timings: dict[str, float] = {}
    with swarm_bed(3) as bed:
        prefix = bed.prefix
        try:
            timings["load_s"] = bed.load_images(
                [*tags, base_image], f"unix://{socket_path_from_env()}"
            )
            bed.form_swarm()
            timings["swarm_s"] = bed.swarm_seconds
            _agent_service(bed, base_image)
            n1 = bed.nodes[0].name
            agents = [f"http://{n.address}:{AGENT_PORT}" for n in bed.nodes]
            t0 = time.monotonic()
            for url in agents:
                _wait(
                    n1,
                    url + "/readyz",
                    180,
                    "agent",
                    bed.nodes[0].docker("service", "ps", "--no-trunc", bed.service),
                )
            timings["agents_ready_s"] = time.monotonic() - t0
            # One agent per node, each on its own node's engine.
            for node in bed.nodes:
                assert node.docker("ps", "-q", "--filter", f"label=cinch.testbed={prefix}").split()
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith("CINCH_")},
                "CINCH_DATA_DIR": str(tmp_path / "api"),
                "CINCH_DATABASE_URL": database_url,
                "CINCH_HOST": "127.0.0.1",
                "CINCH_PORT": str(API_PORT),
                "CINCH_AGENT_TOKEN": TOKEN,
                "CINCH_AGENTS": ",".join(a.removeprefix("http://") for a in agents),
                "CINCH_AUTH_FAILURES_BURST": "1000000",
            }
            (tmp_path / "api").mkdir()
            with open(tmp_path / "api.log", "ab") as log:
                api_process = subprocess.Popen(
                    ["nsenter", f"--net=/run/netns/{n1}", sys.executable, "-m", "api", "api"],
                    env=env,
                    cwd=REPO,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            api = f"http://127.0.0.1:{API_PORT}"
            _wait(n1, api + "/readyz", 60, "api", "")
            db = LiveServer(api, database_url, tmp_path, api_process, tmp_path / "api.log", env)
            key = db.new_key(1_000_000)

            def served() -> list[int]:
                auth = {"Authorization": f"Bearer {TOKEN}"}
                return [
                    int(_get(n1, a + "/v1/pool", headers=auth).json()["runsTotal"]) for a in agents
                ]

            for i in range(9):
                time.sleep(0.4)  # one warm sandbox per node: let them refill
                r = _post(n1, api, key, f"print({i} + 1)")
                assert r.status_code == 200, r.text
                assert r.json()["stdout"] == f"{i + 1}\n"
            per_node = served()
            assert sum(per_node) == 9, per_node
            assert sum(1 for n in per_node if n) >= 2, per_node

            # Partition: node 3's link goes down; routed around within a second.
            victim = bed.nodes[2]
            victim_url = agents[2]
            bed.set_link(victim, up=False)
            t_cut = time.monotonic()
            while _views(n1, api).get(victim_url) is not False:
                assert time.monotonic() - t_cut < 5, "not routed around within 5 s"
                time.sleep(0.02)
            timings["routed_around_s"] = time.monotonic() - t_cut
            ok = 0
            for i in range(6):
                time.sleep(0.4)
                r = _post(n1, api, key, f"print({i})")
                ok += r.status_code == 200
            assert ok == 6
            bed.set_link(victim, up=True)
            t_up = time.monotonic()
            while not _views(n1, api).get(victim_url):
                assert time.monotonic() - t_up < 10, "node 3 did not come back"
                time.sleep(0.05)
            timings["rejoined_s"] = time.monotonic() - t_up
            print(f"\nswarm test bed: {timings}", flush=True)
            assert timings["routed_around_s"] <= 1.0, timings
        finally:
            if api_process is not None and api_process.poll() is None:
                api_process.terminate()
                try:
                    api_process.wait(30)
                except subprocess.TimeoutExpired:
                    api_process.kill()
                    api_process.wait(10)
            if api_process is not None and CI:
                print((tmp_path / "api.log").read_text()[-2000:])
    assert leftovers(prefix) == []
