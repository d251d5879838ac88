"""Policy: admission, one fresh sandbox per run, deadlines, output caps, always destroy."""

from ._errors import NoCapacity as NoCapacity
from ._errors import SchedulerError as SchedulerError
from ._errors import ShuttingDown as ShuttingDown
from ._errors import UnknownLanguage as UnknownLanguage
from ._output import OutputCollector as OutputCollector
from ._scheduler import Scheduler as Scheduler
from ._scheduler import SchedulerConfig as SchedulerConfig
from ._scheduler import SchedulerStatistics as SchedulerStatistics
from ._types import Budget as Budget
from ._types import InputFile as InputFile
from ._types import OutputFile as OutputFile
from ._types import RunRequest as RunRequest
from ._types import RunResult as RunResult
from ._types import Termination as Termination

__all__ = [
    "Budget",
    "InputFile",
    "NoCapacity",
    "OutputCollector",
    "OutputFile",
    "RunRequest",
    "RunResult",
    "Scheduler",
    "SchedulerConfig",
    "SchedulerError",
    "SchedulerStatistics",
    "ShuttingDown",
    "Termination",
    "UnknownLanguage",
]
