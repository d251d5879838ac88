"""Result types returned by the SDK."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SandboxResult:
    """The outcome of one sandboxed run.

    The first five fields are those of 0.2.0, in the same order, so positional
    construction keeps working; the rest were added in 0.3.0 and default to
    "unknown" when the server does not send them.

    Attributes:
        stdout: Everything the program wrote to standard output.
        stderr: Everything the program wrote to standard error.
        exit_code: The process exit status, or ``None`` if it never exited.
        timed_out: Whether the run hit the sandbox's wall-clock limit.
        duration_ms: Wall-clock run time in milliseconds.
        termination: Why the run ended: ``"exited"``, ``"signal"``,
            ``"timeout"``, ``"oom"``, ``"output_limit"``, ``"credit_limit"``,
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

    @property
    def ok(self) -> bool:
        """Whether the program exited with status 0 within its time limit."""
        return self.exit_code == 0 and not self.timed_out


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
