"""Cinch Python loader: a warmed-up interpreter that runs one program.

The supervisor (PID 1) starts this with stdin, stdout and stderr as pipes, fd 3
as the status pipe and fd 4 as the code pipe.  We import what most programs
need, say we are ready ('r' on fd 3), block until the code arrives on fd 4 (the
supervisor has written /tmp/work/main.py by then; we compile the bytes it sent
rather than read the file back), then run it the way `python3 main.py` would:
as `__main__`, with its directory on sys.path, stdin as its stdin, tracebacks
on stderr (source lines from the file, as usual), SystemExit and
KeyboardInterrupt handled as the interpreter does, then non-daemon threads
joined, atexit handlers run and output flushed.  We then report the exit code
on fd 3 and leave with os._exit: the interpreter's own teardown (module
clean-up) costs milliseconds and changes nothing the program can observe.
"""

import os
import sys

# Warm-up: modules that nearly every program or traceback touches.
import atexit
import collections  # noqa: F401
import encodings.idna  # noqa: F401
import functools  # noqa: F401
import io
import itertools  # noqa: F401
import linecache
import math  # noqa: F401
import re  # noqa: F401
import signal
import threading
import traceback  # noqa: F401
import types

# The operator's pre-imports (CINCH_PYTHON_PREIMPORT, passed as CINCH_PREIMPORT):
# imported while warm, so runs that use them start with them loaded.  A module that
# fails to import fails the warm-up, loudly: the operator asked for it.
for _name in os.environ.pop("CINCH_PREIMPORT", "").split(","):
    if _name.strip():
        __import__(_name.strip())

PATH = "/tmp/work/main.py"
_LOADER = __file__


def _excepthook(exc_type, exc, tb):
    # Hide this loader's own frame, so tracebacks look like `python3 main.py`.
    while tb is not None and tb.tb_frame.f_code.co_filename == _LOADER:
        tb = tb.tb_next
    if isinstance(exc, BaseException):
        exc = exc.with_traceback(tb)
    sys.__excepthook__(exc_type, exc, tb)


def _exit_code(exc):
    """The status `python3 main.py` exits with for an uncaught SystemExit."""
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    try:
        print(code, file=sys.stderr)
    except Exception:
        pass
    return 1


class _Stdout(io.RawIOBase):
    """fd 1 under sys.stdout, as the FileIO of `python3 main.py` would be.

    Except at the very end: what the program left in stdout's buffer then is
    kept here and travels with the exit report, one write instead of two (and
    one read fewer for the supervisor), each a costly trip under gVisor.
    """

    name = "<stdout>"
    mode = "wb"

    def __init__(self):
        super().__init__()
        self.tail = None  # a list once the program has finished

    def readable(self):
        return False

    def writable(self):
        return True

    def seekable(self):
        return False

    def fileno(self):
        return 1

    def isatty(self):
        return os.isatty(1)

    def close(self):
        # closefd=False, like the interpreter's own stdout: fd 1 stays open.
        super().close()

    def write(self, data):
        if self.tail is not None:
            self.tail.append(bytes(data))
            return len(data)
        return os.write(1, data)


TAIL_MAX = 65536  # the supervisor's TAIL_CAP


def _install_stdout():
    old = sys.stdout
    raw = _Stdout()
    try:
        size = os.fstat(1).st_blksize or io.DEFAULT_BUFFER_SIZE
    except OSError:
        size = io.DEFAULT_BUFFER_SIZE
    text = io.TextIOWrapper(
        io.BufferedWriter(raw, size),
        encoding=old.encoding,
        errors=old.errors,
        newline="\n",
        line_buffering=old.line_buffering,
        write_through=False,
    )
    text.mode = "w"
    sys.stdout = sys.__stdout__ = text
    return raw, text, old


_RAW_STDOUT, _STDOUT, _OLD_STDOUT = _install_stdout()


def _flush_streams():
    for stream in (sys.stdout, _STDOUT, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass


def _save_figures():
    """Figures the program left open come back as out/figure-N.png (matplotlib only
    if the program imported pyplot: never imported for it)."""
    if "matplotlib.pyplot" not in sys.modules:
        return
    try:
        try:
            import cinch_matplotlib
        except ImportError:
            sys.path.append(os.path.dirname(_LOADER))
            import cinch_matplotlib

        cinch_matplotlib.save_open_figures()
    except BaseException as exc:  # the program's figures are its own; say why, go on
        try:
            print(f"cinch: could not save the open figures: {exc!r}", file=sys.stderr)
        except BaseException:
            pass


def _finish(code):
    try:
        threading._shutdown()
    except BaseException:
        pass
    # Before the atexit handlers: pyplot registers one that closes every figure.
    _save_figures()
    atexit._run_exitfuncs()
    _RAW_STDOUT.tail = []
    _flush_streams()
    tail = b"".join(_RAW_STDOUT.tail)
    if len(tail) > TAIL_MAX:
        _write_all(1, tail)
        tail = b""
    _write_all(3, b"x" + (code & 0xFF).to_bytes(4, "big") + len(tail).to_bytes(4, "big") + tail)
    os._exit(code)


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


# Read into memory allocated and touched while idle: a fresh 1 MiB bytes object
# per read would mmap, fault in and munmap pages on the hot path (each a trip
# to gVisor's kernel).  64 KiB covers nearly every program; longer code is read
# on (and pays for its pages then).
_CODE_BUF = bytearray(1 << 16)


STREAMED = 0x80000000  # the length's top bit: the host reads output as it comes
EXTRA = 0x40000000  # the next bit: u32 length | the program's args and env follow


def _receive_code():
    """u32 word + code (+ u32 length + extra) from fd 4: one read, usually (each
    syscall is costly in gVisor).

    Returns ``(code, streamed, extra)``.
    """
    view = memoryview(_CODE_BUF)
    got = 0
    while got < 4:
        got += _read_into(view, got)
    word = int.from_bytes(_CODE_BUF[:4], "big")
    want = 4 + (word & ~(STREAMED | EXTRA))
    if want > len(_CODE_BUF):
        code = bytes(_CODE_BUF[4:got]) + _read_rest(want - got)
        got = want
        rest = b""
    else:
        while got < want:
            got += _read_into(view, got)
        code = bytes(view[4:want])
        rest = bytes(view[want:got])
    extra = b""
    if word & EXTRA:
        rest += _read_rest(max(0, 4 - len(rest)))
        length = int.from_bytes(rest[:4], "big")
        extra = rest[4:] + _read_rest(length - (len(rest) - 4))
    return code, bool(word & STREAMED), extra


def _read_into(view, at):
    n = os.readv(4, [view[at:]])
    if n == 0:
        os._exit(70)  # the supervisor is gone: nothing to run, nobody to tell
    return n


def _read_rest(n):
    parts = []
    while n > 0:
        chunk = os.read(4, min(n, 1 << 20))
        if not chunk:
            os._exit(70)
        parts.append(chunk)
        n -= len(chunk)
    return b"".join(parts)


def _strings(data, at):
    """``u32 n | {u32 len | bytes}*`` from ``data`` at ``at``: (strings, next offset)."""
    count = int.from_bytes(data[at : at + 4], "big")
    at += 4
    items = []
    for _ in range(count):
        length = int.from_bytes(data[at : at + 4], "big")
        at += 4
        items.append(data[at : at + length].decode("utf-8", "surrogateescape"))
        at += length
    return items, at


def _apply_extra(extra):
    """The program's args (after main.py) and extra environment variables."""
    args, at = _strings(extra, 0)
    env, _ = _strings(extra, at)
    for item in env:
        name, _, value = item.partition("=")
        os.environ[name] = value
    return args


def _run(source, streamed, extra):
    if streamed:
        # Someone watches the output as it comes: flush at each line, as a
        # terminal would (a one-shot run keeps the block buffer and its tail).
        _STDOUT.reconfigure(line_buffering=True)
    main = types.ModuleType("__main__")
    main.__file__ = PATH
    main.__cached__ = None
    main.__builtins__ = __builtins__
    sys.modules["__main__"] = main
    sys.argv[:] = ["main.py", *(_apply_extra(extra) if extra else ())]
    sys.path[0] = os.path.dirname(PATH)
    sys.excepthook = _excepthook
    linecache.clearcache()
    try:
        exec(compile(source, PATH, "exec"), main.__dict__)
    except SystemExit as exc:
        _finish(_exit_code(exc))
    except KeyboardInterrupt as exc:
        sys.excepthook(type(exc), exc, exc.__traceback__)
        threading._shutdown()
        atexit._run_exitfuncs()
        _flush_streams()
        # Like CPython: die of SIGINT, so the parent sees the signal.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    except BaseException as exc:
        sys.excepthook(type(exc), exc, exc.__traceback__)
        _finish(1)
    _finish(0)


# The first compile() and exec() fault in the compiler's code and fresh heap
# arenas: ~1.5-2.5 ms inside gVisor if left to the program's run.
exec(
    compile("def _w(n):\n    return [str(i) for i in range(n)]\nprint(_w(3), file=_sink)\n",
            "<warm-up>", "exec"),
    {"_sink": __import__("io").StringIO()},
)
os.set_inheritable(3, False)
os.set_inheritable(4, False)
os.write(3, b"r")
_run(*_receive_code())
