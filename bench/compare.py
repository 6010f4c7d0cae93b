"""Measure the gateway against its peers with gwbench and record the figures in RESULTS.md.

    python bench/compare.py                 # every suite, medians of 3 runs
    python bench/compare.py --suite local   # one suite
    GWBENCH=/path/to/gwbench python bench/compare.py --repeat 5

Each suite is one `gwbench compare` run (targets interleaved, so that the machine's noise
falls on all of them alike). The tables it prints are written into bench/RESULTS.md
between the suite's markers, with the command and the machine they came from.
"""

import argparse
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "RESULTS.md"
DEFAULT_GWBENCH = ROOT.parent / "shared" / "bench" / "gwbench"
GATEWAY = ROOT / ".venv" / "bin" / "gateway"


@dataclass(frozen=True)
class Suite:
    name: str
    title: str
    targets: str
    args: tuple[str, ...]
    backend: str = "local"


def serve_command(backend: str) -> str:
    base = f"{GATEWAY} serve --port {{port}} --log-level warning"
    if backend == "s3":
        return (
            base + " --backend s3 --s3-bucket {bucket} --s3-endpoint-url {endpoint}"
            " --s3-addressing-style path"
        )
    return base + " --data-dir {data}"


SUITES = [
    Suite(
        "local",
        "Local backend, 1 GiB x 1",
        "seed:form-upload,sink:form-upload,project:form-upload,sink:raw-upload,"
        "project:raw-upload,seed:download,project:download",
        ("--size", "1GiB"),
    ),
    Suite(
        "local-concurrent",
        "Local backend, 64 MiB x 16",
        "seed:form-upload,project:form-upload,project:raw-upload",
        ("--size", "64MiB", "--concurrency", "16"),
    ),
    Suite(
        "tus-local",
        "Resumable uploads, local backend, 1 GiB x 1, 8 MiB chunks",
        "tuspyserver:tus-upload,tus-node:tus-upload,project:tus-upload",
        ("--size", "1GiB", "--chunk-size", "8MiB"),
    ),
    Suite(
        "tus-local-concurrent",
        "Resumable uploads, local backend, 64 MiB x 16, 8 MiB chunks",
        "tuspyserver:tus-upload,tus-node:tus-upload,project:tus-upload",
        ("--size", "64MiB", "--concurrency", "16", "--chunk-size", "8MiB"),
    ),
    Suite(
        "s3",
        "S3 backend (moto), 256 MiB x 1",
        "s3-direct,seed-s3:form-upload,project:form-upload,project:raw-upload",
        ("--size", "256MiB"),
        backend="s3",
    ),
    Suite(
        "s3-concurrent",
        "S3 backend (moto), 32 MiB x 8",
        "s3-direct,seed-s3:form-upload,project:form-upload,project:raw-upload",
        ("--size", "32MiB", "--concurrency", "8"),
        backend="s3",
    ),
    Suite(
        "s3-download",
        "S3 backend (moto), download of 256 MiB",
        "seed-s3:download,project:download",
        ("--size", "256MiB"),
        backend="s3",
    ),
    Suite(
        "tus-s3",
        "Resumable uploads, S3 backend (moto), 256 MiB x 1, 8 MiB chunks",
        "tus-node:tus-upload,project:tus-upload",
        ("--size", "256MiB", "--chunk-size", "8MiB"),
        backend="s3",
    ),
]


def gwbench() -> Path:
    return Path(os.environ.get("GWBENCH", DEFAULT_GWBENCH))


def run_suite(suite: Suite, repeat: int) -> str:
    command = [
        str(gwbench()),
        "compare",
        "--backend",
        suite.backend,
        "--targets",
        suite.targets,
        "--cmd",
        serve_command(suite.backend),
        "--repeat",
        str(repeat),
        *suite.args,
    ]
    print("$", shlex.join(command), flush=True)
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    sys.stderr.write(result.stderr[-4000:])
    if result.returncode != 0:
        sys.exit(f"gwbench failed ({result.returncode}):\n{result.stdout[-4000:]}")
    table = "\n".join(line for line in result.stdout.splitlines() if line.startswith("|"))
    print(table)
    shown = shlex.join(command).replace(str(ROOT.parent), "..").replace(str(ROOT), ".")
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"### {suite.title}\n\n{stamp}, `{shown}`\n\n{table}\n"


def machine() -> str:
    result = subprocess.run(
        [str(gwbench()), "context"], capture_output=True, text=True, check=False
    )
    return "\n".join(line for line in result.stdout.splitlines() if line.startswith("|"))


def record(section: str, body: str, path: Path = RESULTS) -> None:
    """Replace the text between this section's markers in RESULTS.md (or append it),
    leaving every other section as it is."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    begin, end = f"<!-- {section} -->", f"<!-- /{section} -->"
    block = f"{begin}\n{body}\n{end}"
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.DOTALL)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else f"{text}\n{block}\n"
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", action="append", choices=[s.name for s in SUITES])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if not gwbench().exists():
        sys.exit(f"gwbench not found at {gwbench()}; set GWBENCH")
    chosen = [s for s in SUITES if not args.suite or s.name in args.suite]
    for suite in chosen:
        record(suite.name, run_suite(suite, args.repeat))
    record("machine", "### Machine\n\n" + machine() + "\n")


if __name__ == "__main__":
    main()
