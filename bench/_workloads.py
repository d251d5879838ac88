"""The programs the benchmark runs, in each language, with the output each must print."""

from __future__ import annotations

from dataclasses import dataclass

OUTPUT_BYTES = 512_000  # "500 KB": 5,120 lines of 100 bytes
LINE = 100


@dataclass(frozen=True)
class Workload:
    name: str  # short id used in the JSON
    title: str  # what the table says
    code: dict[str, str]
    expect_stdout: str | None = None  # exact stdout, when small
    expect_len: int | None = None  # length of stdout, when large


PRINT = Workload(
    "print",
    "print(2+2)",
    {"python": "print(2+2)", "javascript": "console.log(2+2)"},
    expect_stdout="4\n",
)

# 200 ms of CPU time as the program itself measures it; the clock is read only
# every ~10k iterations so the syscall cost of reading it does not dominate.
CPU_200MS = Workload(
    "cpu200",
    "200 ms CPU",
    {
        "python": (
            "import time\n"
            "t = time.process_time()\n"
            "while time.process_time() - t < 0.2:\n"
            "    for _ in range(10000):\n"
            "        pass\n"
            "print('done')\n"
        ),
        "javascript": (
            "const s = process.cpuUsage();\n"
            "let x = 0;\n"
            "for (;;) {\n"
            "  for (let i = 0; i < 100000; i++) x += i;\n"
            "  const u = process.cpuUsage(s);\n"
            "  if (u.user + u.system >= 200000) break;\n"
            "}\n"
            "console.log(x > 0 ? 'done' : 'odd');\n"
        ),
    },
    expect_stdout="done\n",
)

OUTPUT_ONCE = Workload(
    "out500k_once",
    "500 KB output, one write",
    {
        "python": f"import sys\nsys.stdout.write('x' * {OUTPUT_BYTES - 1} + '\\n')\n",
        "javascript": f"process.stdout.write('x'.repeat({OUTPUT_BYTES - 1}) + '\\n');\n",
    },
    expect_len=OUTPUT_BYTES,
)

OUTPUT_LINES = Workload(
    "out500k_lines",
    "500 KB output, 100 B lines, flush each",
    {
        "python": (
            "import sys\n"
            f"line = 'x' * {LINE - 1} + '\\n'\n"
            f"for _ in range({OUTPUT_BYTES // LINE}):\n"
            "    sys.stdout.write(line)\n"
            "    sys.stdout.flush()\n"
        ),
        "javascript": (
            "const fs = require('fs');\n"
            f"const line = 'x'.repeat({LINE - 1}) + '\\n';\n"
            f"for (let i = 0; i < {OUTPUT_BYTES // LINE}; i++) fs.writeSync(1, line);\n"
        ),
    },
    expect_len=OUTPUT_BYTES,
)

WORKLOADS = {w.name: w for w in (PRINT, CPU_200MS, OUTPUT_ONCE, OUTPUT_LINES)}

# The same print(2+2) for a plain `docker run` of the image (its CMD replaced).
DOCKER_COMMAND = {
    "python": ["/usr/bin/python3", "-c", "print(2+2)"],
    "javascript": ["/usr/local/bin/node", "-e", "console.log(2+2)"],
}


def check_output(workload: Workload, stdout: str) -> bool:
    if workload.expect_stdout is not None:
        return stdout == workload.expect_stdout
    if workload.expect_len is not None:
        return len(stdout) == workload.expect_len
    return True
