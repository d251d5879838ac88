"""Values passed to and returned by the SDK."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ._save import write_files


@dataclass(frozen=True)
class File:
    """A file written into the sandbox's working directory before the program starts.

    ``str`` content is sent as UTF-8 text and ``bytes`` as base64, so most
    callers never set ``encoding``::

        box.run(code, files=[File("data.csv", csv_text), File("logo.png", png_bytes)])

    Attributes:
        path: Where the program finds it, relative to its working directory
            and ``/``-separated, e.g. ``"data/in.csv"``. The server refuses
            absolute paths, ``..`` segments, NUL and paths over 255 bytes.
        content: The file's text or bytes.
        encoding: ``None`` (the default) picks from the content's type.
            ``"base64"`` with ``str`` content says the text is already base64,
            which is sent unchanged; ``"utf-8"`` with ``str`` is the default
            spelled out. ``bytes`` are always sent as base64.
    """

    path: str
    content: str | bytes
    encoding: Literal["utf-8", "base64"] | None = None


#: What ``files=`` accepts: ``{path: content}``, or a list of :class:`File`
#: and ``(path, content)`` pairs (which may repeat a path; the server refuses that).
#: Sequence, not Iterable: with Iterable in the union, mypy cannot type a dict
#: literal of mixed ``str`` and ``bytes`` values against it (a dict is an
#: iterable of its keys). Any iterable works at run time.
InputFiles = Mapping[str, str | bytes] | Sequence[File | tuple[str, str | bytes]]


@dataclass(frozen=True)
class OutputFile:
    """A regular file the program left under ``out/`` in its working directory.

    Attributes:
        path: Its path relative to the working directory, e.g. ``"out/chart.png"``.
            It comes from the sandbox: treat it as untrusted, or write files
            with :meth:`save` or :meth:`SandboxResult.save_files`, which refuse
            paths that would leave the directory.
        size: Its size in bytes (known even when the content was left out).
        mime_type: The server's guess, e.g. ``"image/png"``; ``None`` if it
            sent none.
        content: Its bytes, or ``None`` if it did not fit the run's output-files
            limit (then :attr:`SandboxResult.files_truncated` is true).
    """

    path: str
    size: int
    mime_type: str | None = None
    content: bytes | None = field(default=None, repr=False)

    @property
    def truncated(self) -> bool:
        """Whether the server left this file's content out (it was over the limit)."""
        return self.content is None

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Writes this file under ``directory``, keeping its path.

        ``out/chart.png`` saved to ``"results"`` becomes
        ``results/out/chart.png``, with the checks of
        :meth:`SandboxResult.save_files` (the path comes from the sandbox).

        Returns:
            The path written.

        Raises:
            ValueError: If the path would land outside ``directory``, or the
                server left the content out (:attr:`truncated`).
            OSError: If writing fails.
        """
        if self.content is None:
            raise ValueError(f"{self.path}: the server left its content out (filesTruncated)")
        return write_files(directory, [(self.path, self.content)])[0]


@dataclass
class SandboxResult:
    """The outcome of one sandboxed run.

    The first five fields are those of 0.2.0, in the same order, so positional
    construction keeps working; the rest were added later and default to
    "unknown" (or empty) when the server does not send them.

    Attributes:
        stdout: Everything the program wrote to standard output.
        stderr: Everything the program wrote to standard error.
        exit_code: The process exit status, or ``None`` if it never exited.
        timed_out: Whether the run hit its wall-clock limit (the server's, or
            a lower ``timeout_ms``).
        duration_ms: Wall-clock run time in milliseconds.
        termination: Why the run ended: ``"exited"``, ``"signal"``,
            ``"timeout"``, ``"oom"``, ``"output_limit"``, ``"credit_limit"``
            (it would have cost more than ``max_credits``),
            ``"sandbox_error"`` or ``"cancelled"`` (a streamed run whose client
            hung up).
        signal: Name of the signal that killed the process, if any.
        truncated: Whether stdout/stderr were cut at the output limit.
        queue_ms: Time spent waiting for a free sandbox, in milliseconds.
        credits_charged: Credits this run cost.
        credits_remaining: The account's balance after this run
            (``X-Credits-Remaining``); ``None`` for a streamed run, whose
            headers are sent before it runs.
        request_id: The server's ``X-Request-Id`` for this request.
        files: Every regular file the program left under ``out/`` (0.4.0);
            empty when there were none or the server predates output files.
        files_truncated: Whether some of :attr:`files` came without content
            because they did not fit the output-files limit (0.4.0).
    """

    stdout: str
    stderr: str
    exit_code: int | None
    timed_out: bool
    duration_ms: int
    termination: str | None = None
    signal: str | None = None
    truncated: bool = False
    queue_ms: int | None = None
    credits_charged: int | None = None
    credits_remaining: int | None = None
    request_id: str | None = None
    files: list[OutputFile] = field(default_factory=list)
    files_truncated: bool = False

    @property
    def ok(self) -> bool:
        """Whether the program exited with status 0 within its time limit."""
        return self.exit_code == 0 and not self.timed_out

    def save_files(self, directory: str | os.PathLike[str]) -> list[Path]:
        """Writes every output file that has content under ``directory``.

        Each file keeps its path, so ``out/chart.png`` saved to ``"results"``
        becomes ``results/out/chart.png``. ``directory`` and missing parent
        folders are created; existing files are replaced (each file appears
        whole, through a rename). Files without content (see
        :attr:`OutputFile.truncated`) are skipped.

        The paths come from the sandbox, so they are checked as hostile: all of
        them before anything is written, for an absolute path, a drive, a
        ``..`` segment or NUL; and then each parent folder as it is opened,
        which must not be a symbolic link (on POSIX through ``openat`` with
        ``O_NOFOLLOW``, so a link swapped in meanwhile is refused too). A
        symbolic link at a file's own name is replaced, never written through.

        This is blocking file I/O: from async code, call it in a worker
        thread, e.g. ``await anyio.to_thread.run_sync(result.save_files, d)``.

        Args:
            directory: The folder to write under.

        Returns:
            The paths written, in the order of :attr:`files`.

        Raises:
            ValueError: If a file's path would land outside ``directory``.
            OSError: If writing fails (e.g. a file's parent is a regular file).
        """
        return write_files(
            directory, [(f.path, f.content) for f in self.files if f.content is not None]
        )


@dataclass(frozen=True)
class OutputChunk:
    """A piece of a streamed run's output, as the program wrote it.

    Attributes:
        stream: ``"stdout"`` or ``"stderr"``.
        text: The text; never half a character. All chunks of a stream,
            joined, are that stream's text in the final :class:`SandboxResult`.
    """

    stream: str
    text: str


#: What :meth:`pangolin.Sandbox.stream` yields: chunks, then one result.
StreamEvent = OutputChunk | SandboxResult
