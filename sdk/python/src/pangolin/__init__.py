"""Pangolin: the official Python SDK for Cinch.

Run untrusted code in disposable sandboxes with one call::

    from pangolin import Sandbox

    result = Sandbox().run("print(2 + 2)")   # key from $CINCH_API_KEY
    assert result.stdout == "4\\n"

    for event in Sandbox().stream(code):   # output as it is written, then the result
        ...

    result = Sandbox().run(code, files={"data.csv": csv_text}, args=["--plot"])
    result.save_files("results")   # what the program left under out/
"""

from ._base import DEFAULT_BASE_URL
from ._version import __version__
from .async_client import AsyncSandbox
from .client import Sandbox
from .errors import (
    AuthenticationError,
    BadRequestError,
    CinchError,
    ConflictError,
    InsufficientCreditsError,
    NetworkError,
    RateLimitError,
    RequestTimeoutError,
    ServiceUnavailableError,
)
from .models import File, InputFiles, OutputChunk, OutputFile, SandboxResult, StreamEvent

__all__ = [
    "DEFAULT_BASE_URL",
    "AsyncSandbox",
    "AuthenticationError",
    "BadRequestError",
    "CinchError",
    "ConflictError",
    "File",
    "InputFiles",
    "InsufficientCreditsError",
    "NetworkError",
    "OutputChunk",
    "OutputFile",
    "RateLimitError",
    "RequestTimeoutError",
    "Sandbox",
    "SandboxResult",
    "ServiceUnavailableError",
    "StreamEvent",
    "__version__",
]
