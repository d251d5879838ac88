"""How a sandbox container is made: the one place that defines its isolation.

Every sandbox is created from :func:`container_config`.  What it sets, and why:

- runtime ``runsc`` (gVisor), registered with ``--network=none``, and
  ``NetworkDisabled`` so Docker makes no network namespace at all: the
  sandbox sees only ``lo``.
- read-only root, ``/tmp`` a 64 MB tmpfs, ``/dev/shm`` small: all of it lives
  in sandbox memory and counts against the memory limit.
- 256 MB of memory and no swap; a CPU quota; ``nproc`` (gVisor enforces it, a
  fork bomb gets EAGAIN) and a high pids limit only as a backstop, since the
  host counts gVisor's own threads.
- every capability dropped, ``no-new-privileges``, a non-root user, no host
  mounts, no Docker socket, no host environment, log driver ``none`` (output
  never reaches the host's disk), ``oom_score_adj`` so that sandboxes die
  before the control plane, a cgroup parent with a low CPU weight.
- the owning instance's label, so clean-up only ever touches our own.
- the environment: :data:`SANDBOX_ENV` (the image adds its own), plus the
  operator's settings for the runner (``CINCH_PREIMPORT``), never the host's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

OWNER_LABEL = "cinch.owner"
LANGUAGE_LABEL = "cinch.language"
SANDBOX_USER = "1000:1000"
SANDBOX_ENV = (
    "LANG=C.UTF-8",
    "HOME=/tmp/work",
    "PATH=/usr/local/bin:/usr/bin:/bin",
)
MB = 1024 * 1024


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits of one sandbox. Units are in the names."""

    memory_bytes: int = 256 * MB
    tmp_bytes: int = 64 * MB
    shm_bytes: int = 16 * MB
    nano_cpus: int = 1_000_000_000
    nproc: int = 128
    # Only a backstop (nproc contains fork loops): the host counts gVisor's own
    # threads and, under ptrace, a stub process per sandboxed process; 128
    # processes took about 1,300 host pids here, and 1024 crashed the sandbox.
    pids_limit: int = 4096
    nofile: int = 256
    file_size_bytes: int = 64 * MB
    oom_score_adj: int = 1000


def container_config(
    *,
    image: str,
    language: str,
    runtime: str,
    owner: str,
    limits: SandboxLimits,
    cgroup_parent: str | None,
    extra_labels: Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The Engine API body of ``POST /containers/create`` for one sandbox.

    ``env`` adds variables for the runner (the operator's, e.g. ``CINCH_PREIMPORT``);
    it cannot replace one of :data:`SANDBOX_ENV`.
    """
    labels = {OWNER_LABEL: owner, LANGUAGE_LABEL: language, **(extra_labels or {})}
    fixed = {item.split("=", 1)[0] for item in SANDBOX_ENV}
    clash = fixed & set(env or {})
    if clash:
        raise ValueError(f"sandbox environment: {', '.join(sorted(clash))} cannot be changed")
    host_config: dict[str, Any] = {
        "Runtime": runtime,
        "ReadonlyRootfs": True,
        "Tmpfs": {"/tmp": f"rw,nosuid,nodev,size={limits.tmp_bytes},mode=1777"},
        "ShmSize": limits.shm_bytes,
        "Memory": limits.memory_bytes,
        "MemorySwap": limits.memory_bytes,
        "NanoCpus": limits.nano_cpus,
        "PidsLimit": limits.pids_limit,
        "Ulimits": [
            {"Name": "nproc", "Soft": limits.nproc, "Hard": limits.nproc},
            {"Name": "nofile", "Soft": limits.nofile, "Hard": limits.nofile},
            {"Name": "fsize", "Soft": limits.file_size_bytes, "Hard": limits.file_size_bytes},
            {"Name": "core", "Soft": 0, "Hard": 0},
        ],
        "CapDrop": ["ALL"],
        "SecurityOpt": ["no-new-privileges"],
        "Privileged": False,
        "LogConfig": {"Type": "none", "Config": {}},
        "OomScoreAdj": limits.oom_score_adj,
        "Binds": [],
        "Mounts": [],
        "AutoRemove": False,
        "Init": False,
        "IpcMode": "private",
    }
    if cgroup_parent:
        host_config["CgroupParent"] = cgroup_parent
    return {
        "Image": image,
        "User": SANDBOX_USER,
        "Env": [*SANDBOX_ENV, *(f"{k}={v}" for k, v in sorted((env or {}).items()))],
        "WorkingDir": "/tmp",
        "Labels": labels,
        "NetworkDisabled": True,
        "AttachStdin": True,
        "AttachStdout": True,
        "AttachStderr": True,
        "OpenStdin": True,
        "StdinOnce": True,
        "Tty": False,
        "HostConfig": host_config,
    }
