"""Writing a run's output files to disk without letting their paths leave the folder.

The paths come from the sandbox, that is from whatever program ran there (or
from a server that is not ours), so :func:`write_files` treats them as
hostile. On POSIX it walks each path one folder at a time with ``openat`` and
``O_NOFOLLOW``, so neither a ``..``, nor a symbolic link already in the
folder, nor one swapped in while it writes, can redirect a file. Where
``dir_fd`` is not supported (Windows) it checks each folder with ``lstat`` and
``realpath`` before using it, which leaves a window for a concurrent swap.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterable
from pathlib import Path

# openat, mkdirat, renameat, unlinkat, fstatat: all or nothing.
_DIR_FD = {os.open, os.mkdir, os.rename, os.unlink, os.stat} <= os.supports_dir_fd
_WINDOWS = os.name == "nt"
_WINDOWS_DEVICES = frozenset(
    ["CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"]
    + [f"{name}{n}" for name in ("COM", "LPT") for n in "123456789¹²³"]
)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_O_BINARY = getattr(os, "O_BINARY", 0)


def write_files(
    directory: str | os.PathLike[str], files: Iterable[tuple[str, bytes]]
) -> list[Path]:
    """Writes each ``(path, content)`` under ``directory``; see ``SandboxResult.save_files``.

    Every path is checked before anything is written; folders along a path
    are checked as they are opened.

    Returns:
        The paths written, in order.

    Raises:
        ValueError: For a path that would leave ``directory``.
        OSError: If writing fails.
    """
    root = Path(directory)
    checked = [(path, split_path(path), content) for path, content in files]
    root.mkdir(parents=True, exist_ok=True)
    written = []
    if _DIR_FD:
        # The root itself is the caller's choice: a symbolic link there is followed.
        root_fd = os.open(root, os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC)
        try:
            for path, parts, content in checked:
                _write_at(root_fd, path, parts, content)
                written.append(root.joinpath(*parts))
        finally:
            os.close(root_fd)
    else:
        for path, parts, content in checked:
            written.append(_write_checked(root, path, parts, content))
    return written


def split_path(path: str, *, windows: bool = _WINDOWS) -> list[str]:
    """The folders and name of a relative, ``/``-separated path that stays inside its root.

    Args:
        path: The path as the server sent it.
        windows: Also refuse what Windows would read as a drive, a separator
            or a device (tests pass it; by default, whether this is Windows).

    Raises:
        ValueError: If the path is empty, absolute, holds NUL or a ``..``
            segment, or (on Windows) a backslash, a colon or a device name.
    """
    if not isinstance(path, str) or not path:
        raise ValueError(f"refusing to save a file with the path {path!r}")
    if "\0" in path:
        raise _refuse(path, "it contains NUL")
    if path.startswith("/"):
        raise _refuse(path, "it is absolute")
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if not parts:
        raise _refuse(path, "it names no file")
    for part in parts:
        if part == "..":
            raise _refuse(path, "it has a '..' segment")
        if windows:
            if "\\" in part or ":" in part:
                raise _refuse(path, "it has a backslash or a colon")
            if part.split(".")[0].rstrip(" ").upper() in _WINDOWS_DEVICES:
                raise _refuse(path, f"{part!r} is a device name on Windows")
    return parts


def _refuse(path: str, why: str) -> ValueError:
    return ValueError(f"refusing to save {path!r}: {why}")


def _write_at(root_fd: int, path: str, parts: list[str], content: bytes) -> None:
    """Writes one file below ``root_fd``, opening each folder without following links."""
    fd = os.dup(root_fd)
    try:
        for depth, part in enumerate(parts[:-1]):
            child = _open_folder_at(fd, part, path, "/".join(parts[: depth + 1]))
            os.close(fd)
            fd = child
        _replace_at(fd, parts[-1], content)
    finally:
        os.close(fd)


def _open_folder_at(dir_fd: int, name: str, path: str, where: str) -> int:
    """Opens (making it if need be) the folder ``name`` in ``dir_fd``, never through a link."""
    try:
        os.mkdir(name, dir_fd=dir_fd)
    except FileExistsError:
        pass
    try:
        return os.open(name, os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC, dir_fd=dir_fd)
    except OSError as exc:
        if _is_link_at(dir_fd, name):
            raise _refuse(path, f"{where!r} is a symbolic link") from exc
        raise


def _replace_at(dir_fd: int, name: str, content: bytes) -> None:
    """Writes ``name`` in ``dir_fd`` through a fresh file renamed over it."""
    temp = _temp_name()
    fd = os.open(
        temp,
        os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_CLOEXEC | _O_BINARY,
        0o666,
        dir_fd=dir_fd,
    )
    try:
        with open(fd, "wb") as out:
            out.write(content)
        # renameat replaces a file, or a symbolic link itself, never a link's target.
        os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp, dir_fd=dir_fd)
        raise


def _temp_name() -> str:
    # Not derived from the file's name, which may already be as long as a name can be.
    return f".pangolin-{secrets.token_hex(8)}.part"


def _is_link_at(dir_fd: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _write_checked(root: Path, path: str, parts: list[str], content: bytes) -> Path:
    """The same without ``dir_fd``: each folder checked before use (not race-free)."""
    real_root = os.path.realpath(root)
    folder = root
    for depth, part in enumerate(parts[:-1]):
        folder = folder / part
        if folder.is_symlink() or _is_junction(folder):
            where = "/".join(parts[: depth + 1])
            raise _refuse(path, f"{where!r} is a symbolic link")
        try:
            folder.mkdir()
        except FileExistsError:
            if not folder.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(folder)) from None
        real = os.path.realpath(folder)
        if os.path.commonpath([real, real_root]) != real_root:
            raise _refuse(path, f"{'/'.join(parts[: depth + 1])!r} leads outside")
    target = folder / parts[-1]
    temp = folder / _temp_name()
    try:
        with open(temp, "xb") as out:
            out.write(content)
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return target


def _is_junction(path: Path) -> bool:
    isjunction = getattr(os.path, "isjunction", None)  # Python 3.12+
    return bool(isjunction(path)) if isjunction is not None else False
