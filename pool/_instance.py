"""A stable instance id per data directory, held by a lock file.

Every container we create carries this id in its ``cinch.owner`` label; at
start-up we remove our own leftovers and never touch another instance's.
"""

from __future__ import annotations

import fcntl
import os
import secrets
from pathlib import Path
from typing import IO

from ._errors import PoolError


class InstanceLocked(PoolError):
    """Another live process already runs this data directory's instance."""


class Instance:
    """Holds the lock on ``<data_dir>/instance.lock`` while open."""

    def __init__(self, data_dir: Path, instance_id: str, lock_file: IO[bytes]) -> None:
        self.data_dir = data_dir
        self.id = instance_id
        self._lock_file = lock_file

    @classmethod
    def acquire(cls, data_dir: Path) -> Instance:
        data_dir.mkdir(parents=True, exist_ok=True)
        lock_file = open(data_dir / "instance.lock", "ab")
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_file.close()
            raise InstanceLocked(
                f"{data_dir} is in use by another Cinch process; stop it or use another "
                "CINCH_DATA_DIR"
            ) from None
        id_path = data_dir / "instance-id"
        if id_path.exists():
            instance_id = id_path.read_text().strip()
        else:
            instance_id = "cinch-" + secrets.token_hex(6)
            tmp = id_path.with_suffix(".tmp")
            tmp.write_text(instance_id + "\n")
            os.replace(tmp, id_path)
        return cls(data_dir, instance_id, lock_file)

    def release(self) -> None:
        fcntl.flock(self._lock_file, fcntl.LOCK_UN)
        self._lock_file.close()
