"""Download through the gateway's s3 backend against boto3's own GetObject, same moto.

    python bench/s3_get.py [--size 256] [--repeat 3]

One moto server, one object (put through the gateway, so it is a multipart object with its
SHA-256 in tags, as the gateway stores large uploads); then, turn about: boto3 reading the
object with GetObject in 1 MiB reads, and curl downloading it from the gateway. Medians of
MB/s (10^6 bytes per second) go to bench/RESULTS.md under "s3-get".
"""

import argparse
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.compare import machine, record
from gateway.testing import moto_server, running_gateway, s3_environment

MiB = 1024 * 1024


def boto3_get(s3: object, bucket: str, key: str) -> float:
    started = time.perf_counter()
    body = s3.get_object(Bucket=bucket, Key=key)["Body"]  # type: ignore[attr-defined]
    size = sum(len(chunk) for chunk in iter(lambda: body.read(MiB), b""))
    return size / (time.perf_counter() - started) / 1e6


def curl_get(url: str) -> float:
    result = subprocess.run(
        [
            "curl",
            "-s",
            "--noproxy",
            "*",
            "-o",
            "/dev/null",
            "-w",
            "%{size_download} %{time_total}",
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    size, seconds = result.stdout.split()
    return int(size) / float(seconds) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="MiB")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with moto_server() as moto, tempfile.TemporaryDirectory() as folder:
        bucket = moto.create_bucket()
        with running_gateway(
            data_dir=Path(folder) / "unused", env=s3_environment(moto.url, bucket)
        ) as gateway:
            data = os.urandom(args.size * MiB)
            put = subprocess.run(
                ["curl", "-s", "--noproxy", "*", "-T", "-", f"{gateway.url}/objects/big"],
                input=data,
                capture_output=True,
                check=True,
            )
            assert hashlib.sha256(data).hexdigest().encode() in put.stdout
            s3 = moto.s3()
            rates: dict[str, list[float]] = {"boto3 GetObject": [], "gateway download": []}
            for _ in range(args.repeat):
                rates["boto3 GetObject"].append(boto3_get(s3, bucket, "big"))
                rates["gateway download"].append(curl_get(f"{gateway.url}/objects/big"))
    base = statistics.median(rates["boto3 GetObject"])
    rows = [
        f"| {name} | {statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f}) "
        f"| {statistics.median(values) / base:.2f}x |"
        for name, values in rates.items()
    ]
    table = "\n".join(["| reader | MB/s median (min-max) | vs boto3 |", "|---|---|---|", *rows])
    print(table)
    command = f"python bench/s3_get.py --size {args.size} --repeat {args.repeat}"
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    record(
        "s3-get",
        f"### S3 backend (moto), {args.size} MiB downloads against boto3's own "
        f"GetObject\n\n{stamp}, `{command}`\n\n{table}\n",
    )
    record("machine", "### Machine\n\n" + machine() + "\n")


if __name__ == "__main__":
    main()
