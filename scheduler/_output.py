"""The output cap: stdout and stderr together, counted in raw bytes before decoding."""

from __future__ import annotations

from collections.abc import Callable

from ._types import OutputFile


def _complete_utf8_prefix(data: bytes) -> bytes:
    """``data`` without a trailing incomplete UTF-8 sequence (cut at a byte limit)."""
    # Look back at most 3 bytes for the lead byte of the last sequence.
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 == 0x80:  # continuation byte: keep looking for the lead
            continue
        if byte & 0x80 == 0:  # ASCII: complete
            return data
        need = (
            2
            if byte & 0xE0 == 0xC0
            else 3
            if byte & 0xF0 == 0xE0
            else 4
            if byte & 0xF8 == 0xF0
            else 1
        )
        return data if back >= need else data[:-back]
    return data


class OutputCollector:
    """Collects a run's output up to ``limit`` bytes in all.

    :meth:`add` returns False once the limit is passed: the run must stop.  The
    stream that crossed the limit is cut at it, and the cut moved back before an
    incomplete UTF-8 sequence, so a character is never split in half.

    With ``on_text``, each stream's kept bytes are also decoded as they come and
    handed over as text (``on_text(stream, text)``): never half a character,
    and all of it together, once :meth:`finish` has flushed the last incomplete
    sequence, exactly what :meth:`decode` returns.
    """

    def __init__(self, limit: int, on_text: Callable[[str, str], None] | None = None) -> None:
        self.limit = limit
        self.total = 0
        self.truncated = False
        self._data: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
        self._on_text = on_text
        self._sent = {name: 0 for name in self._data}  # bytes handed over as text

    def add(self, stream: str, data: bytes) -> bool:
        if self.truncated:
            return False
        room = self.limit - self.total
        buf = self._data[stream]
        if len(data) > room:
            buf += data[:room]
            # The incomplete sequence may have begun in an earlier chunk (chunks
            # follow pipe reads, not characters): look at the stream's own tail.
            tail = bytes(buf[-4:])
            dropped = len(tail) - len(_complete_utf8_prefix(tail))
            if dropped:
                del buf[-dropped:]
            self.total += room - dropped
            self.truncated = True
            self._emit(stream, final=True)
            return False
        buf += data
        self.total += len(data)
        self._emit(stream, final=False)
        return True

    def finish(self) -> None:
        """Hand over what is left of each stream (a trailing incomplete sequence)."""
        for stream in self._data:
            self._emit(stream, final=True)

    def _emit(self, stream: str, *, final: bool) -> None:
        if self._on_text is None:
            return
        buf = self._data[stream]
        end = len(buf)
        if not final:
            # Hold back a trailing incomplete sequence: the next chunk completes it,
            # or the cut drops it (the same test as the cut's, so the cut never
            # falls before what was handed over).
            tail = bytes(buf[-4:])
            end -= len(tail) - len(_complete_utf8_prefix(tail))
        start = self._sent[stream]
        if end > start:
            self._sent[stream] = end
            self._on_text(stream, bytes(buf[start:end]).decode("utf-8", "replace"))

    def decode(self) -> tuple[str, str]:
        return (
            self._data["stdout"].decode("utf-8", "replace"),
            self._data["stderr"].decode("utf-8", "replace"),
        )


class FilesCollector:
    """The files a run left under ``out/``, within its limits (checked again here:
    the frames could be forged by the program, which can write to the stream)."""

    def __init__(self, max_files: int, max_bytes: int) -> None:
        self.max_files = max_files
        self.max_bytes = max_bytes
        self.max_listed = max(64, 4 * max_files)
        self.files: list[OutputFile] = []
        self.truncated = False
        self._with_content = 0
        self._bytes = 0
        self._paths: set[str] = set()

    def add(self, path: str, size: int, content: bytes | None) -> None:
        parts = path.split("/")
        if (
            len(parts) < 2
            or parts[0] != "out"
            or any(p in ("", ".", "..") for p in parts)
            or path in self._paths
        ):
            return  # not what our supervisor sends
        if len(self.files) >= self.max_listed:
            self.truncated = True
            return
        if content is not None:
            if self._with_content < self.max_files and self._bytes + len(content) <= self.max_bytes:
                self._with_content += 1
                self._bytes += len(content)
            else:
                content = None
        if content is None:
            self.truncated = True
        self._paths.add(path)
        self.files.append(OutputFile(path, size if content is None else len(content), content))
