"""The baseline: a plain ``docker run --rm --runtime=runsc-*`` of the same image, per run.

The client is the docker CLI (``docker run``), as a user would type it, with
the hardening flags of a Cinch sandbox that the CLI can express (read-only
root, tmpfs /tmp, memory, CPU, pids, ulimits, no capabilities,
no-new-privileges, non-root user, log driver none, network none, the same
cgroup parent).  Every container is labelled ``cinch.owner=<owner>`` and named
``<owner>-<n>``; :meth:`DockerRun.cleanup` removes exactly those.
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
import time
from dataclasses import dataclass, field

import trio

from ._model import Sample
from ._workloads import DOCKER_COMMAND

RUN_TIMEOUT_S = 60.0


def docker_cli_version(docker: str) -> str:
    try:
        out = subprocess.run(
            [docker, "version", "--format", "{{.Client.Version}} / engine {{.Server.Version}}"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        return out.stdout.strip() or out.stderr.strip()[:200]
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"


@dataclass
class DockerRun:
    owner: str
    images: dict[str, str]
    runtimes: dict[str, str]
    cgroup_parent: str | None = None
    docker: str = field(default_factory=lambda: shutil.which("docker") or "docker")
    _counter: itertools.count[int] = field(default_factory=itertools.count)

    @property
    def client_name(self) -> str:
        return f"docker CLI {docker_cli_version(self.docker)}"

    def argv(self, language: str, name: str) -> list[str]:
        argv = [
            self.docker,
            "run",
            "--rm",
            "--name",
            name,
            "--label",
            f"cinch.owner={self.owner}",
            "--runtime",
            self.runtimes[language],
            "--network",
            "none",
            "--read-only",
            "--tmpfs",
            "/tmp:rw,nosuid,nodev,size=67108864,mode=1777",
            "--shm-size",
            "16m",
            "--memory",
            "256m",
            "--memory-swap",
            "256m",
            "--cpus",
            "1",
            "--pids-limit",
            "1024",
            "--ulimit",
            "nproc=128:128",
            "--ulimit",
            "nofile=256:256",
            "--ulimit",
            "core=0:0",
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges",
            "--user",
            "1000:1000",
            "--log-driver",
            "none",
            "--oom-score-adj",
            "1000",
            "--workdir",
            "/tmp",
        ]
        if self.cgroup_parent:
            argv += ["--cgroup-parent", self.cgroup_parent]
        return [*argv, self.images[language], *DOCKER_COMMAND[language]]

    async def run_once(self, language: str) -> Sample:
        name = f"{self.owner}-{next(self._counter)}"
        t0 = time.perf_counter()
        try:
            with trio.fail_after(RUN_TIMEOUT_S):
                result = await trio.run_process(
                    self.argv(language, name),
                    capture_stdout=True,
                    capture_stderr=True,
                    check=False,
                )
        except trio.TooSlowError:
            await self._remove([name])
            return Sample(
                (time.perf_counter() - t0) * 1000, "timeout", False, end_s=time.perf_counter()
            )
        t1 = time.perf_counter()
        if result.returncode != 0:
            status = f"exit-{result.returncode}"
        elif result.stdout != b"4\n":
            status = "wrong-output"
        else:
            status = "ok"
        detail = (
            ""
            if status == "ok"
            else (result.stderr or result.stdout)[-160:].decode("utf-8", "replace")
        )
        return Sample((t1 - t0) * 1000, status, status == "ok", end_s=t1, detail=detail)

    async def _remove(self, names: list[str]) -> None:
        if names:
            await trio.run_process(
                [self.docker, "rm", "-f", *names],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )

    async def cleanup(self) -> int:
        """Remove any container left with our label (a run that timed out); returns how many."""
        result = await trio.run_process(
            [self.docker, "ps", "-aq", "--filter", f"label=cinch.owner={self.owner}"],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        ids = result.stdout.decode().split()
        if ids:
            await trio.run_process(
                [self.docker, "rm", "-f", *ids],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
        return len(ids)
