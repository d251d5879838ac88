"""Mechanism: pre-started gVisor sandboxes per language, and the Docker engine under them."""

from ._backend import BackendStatistics as BackendStatistics
from ._backend import DockerBackend as DockerBackend
from ._backend import DockerSandbox as DockerSandbox
from ._docker import DockerClient as DockerClient
from ._docker import socket_path_from_env as socket_path_from_env
from ._errors import Conflict as Conflict
from ._errors import EngineError as EngineError
from ._errors import EngineUnavailable as EngineUnavailable
from ._errors import NoCapacity as NoCapacity
from ._errors import NotFound as NotFound
from ._errors import PoolError as PoolError
from ._errors import ProtocolError as ProtocolError
from ._errors import SandboxStartError as SandboxStartError
from ._instance import Instance as Instance
from ._instance import InstanceLocked as InstanceLocked
from ._languages import LANGUAGES as LANGUAGES
from ._languages import Language as Language
from ._packages import Package as Package
from ._packages import installed_packages as installed_packages
from ._pool import LiveSandboxes as LiveSandboxes
from ._pool import PoolStatistics as PoolStatistics
from ._pool import StartSlots as StartSlots
from ._pool import WarmPool as WarmPool
from ._pool import run_pools as run_pools
from ._protocol import NO_EXTRAS as NO_EXTRAS
from ._protocol import Backend as Backend
from ._protocol import DeathInfo as DeathInfo
from ._protocol import Event as Event
from ._protocol import Exited as Exited
from ._protocol import FilesCut as FilesCut
from ._protocol import Gone as Gone
from ._protocol import OutFile as OutFile
from ._protocol import Output as Output
from ._protocol import RunExtras as RunExtras
from ._protocol import Sandbox as Sandbox
from ._spec import OWNER_LABEL as OWNER_LABEL
from ._spec import SandboxLimits as SandboxLimits
from ._spec import container_config as container_config

__all__ = [
    "LANGUAGES",
    "NO_EXTRAS",
    "OWNER_LABEL",
    "Backend",
    "BackendStatistics",
    "Conflict",
    "DeathInfo",
    "DockerBackend",
    "DockerClient",
    "DockerSandbox",
    "EngineError",
    "EngineUnavailable",
    "Event",
    "Exited",
    "FilesCut",
    "Gone",
    "Instance",
    "InstanceLocked",
    "Language",
    "LiveSandboxes",
    "NoCapacity",
    "NotFound",
    "OutFile",
    "Output",
    "Package",
    "PoolError",
    "PoolStatistics",
    "ProtocolError",
    "RunExtras",
    "Sandbox",
    "SandboxLimits",
    "SandboxStartError",
    "StartSlots",
    "WarmPool",
    "container_config",
    "installed_packages",
    "run_pools",
    "socket_path_from_env",
]
