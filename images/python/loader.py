"""Cinch Python loader: a warmed-up interpreter that runs one program.

The supervisor (PID 1) starts this with stdin, stdout and stderr as pipes and
fd 3 as the status pipe.  We import what most programs need, say we are ready
('r' on fd 3), block on one byte from stdin, then run /tmp/work/main.py the way
`python3 main.py` would: as `__main__`, with its directory on sys.path, the
rest of stdin as its stdin, tracebacks on stderr, SystemExit and
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
import itertools  # noqa: F401
import linecache
import math  # noqa: F401
import re  # noqa: F401
import signal
import threading
import traceback  # noqa: F401
import types

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


def _finish(code):
    try:
        threading._shutdown()
    except BaseException:
        pass
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass
    os.write(3, b"x" + (code & 0xFF).to_bytes(4, "big"))
    os._exit(code)


def _run():
    # os-level calls: three syscalls instead of seven, and each one is costly in gVisor.
    fd = os.open(PATH, os.O_RDONLY)
    try:
        source = os.read(fd, 1 << 20)  # code is capped far below: one read, usually
        while len(source) % (1 << 20) == 0 and (chunk := os.read(fd, 1 << 20)):
            source += chunk
    finally:
        os.close(fd)
    main = types.ModuleType("__main__")
    main.__file__ = PATH
    main.__cached__ = None
    main.__builtins__ = __builtins__
    sys.modules["__main__"] = main
    sys.argv[:] = ["main.py"]
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
        sys.stdout.flush()
        sys.stderr.flush()
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
os.write(3, b"r")
os.read(0, 1)
_run()
