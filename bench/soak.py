"""A bounded soak: many clients for a while against a real gateway, on each backend.

    python bench/soak.py                       # 64 clients, 60 s, local then s3 (moto)
    python bench/soak.py --backend s3 --clients 16 --duration 20
    python bench/soak.py --write bench/RESULTS.md

Each client owns a few keys and, at random, PUTs them (1 KiB to 12 MiB, raw, as a form or
as a resumable upload in two PATCHes),
GETs them whole or by a random Range, HEADs, lists or deletes them, and checks every answer
against what it last stored (SHA-256 of whole bodies, exact bytes of ranges). At the end
every object storage holds is read back and checked, the listing must name exactly the
objects the clients believe exist, and nothing may be left in tmp/ or open as a multipart
upload. Meanwhile the server's RSS, open files and connections are sampled each second.

Exits non-zero on any error; `--write` puts the figures in a section of the results file.
"""

import argparse
import asyncio
import base64
import contextlib
import hashlib
import os
import platform
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.compare import record
from gateway.testing import gateway_on_moto, running_gateway

KiB, MiB = 1024, 1024 * 1024
KEYS_PER_CLIENT = 4
SECTION = "## Soak"


def body(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def random_size(rng: random.Random) -> int:
    return int(2 ** rng.uniform(10, 23.6))  # 1 KiB to 12 MiB, as many small as large


@dataclass
class Stored:
    seed: int
    size: int
    sha256: str


@dataclass
class Tally:
    ops: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    bytes_up: int = 0
    bytes_down: int = 0

    def fail(self, what: str) -> None:
        if len(self.errors) < 50:
            self.errors.append(what)
        else:
            self.errors.append("...")


class Client:
    def __init__(self, number: int, http: httpx.AsyncClient, tally: Tally, seed: int):
        self.prefix = f"soak/c{number:03d}/"
        self.http, self.tally = http, tally
        self.rng = random.Random(seed)
        self.stored: dict[str, Stored] = {}

    async def run(self, until: float) -> None:
        operations = [
            (self.put, 4),
            (self.form, 2),
            (self.tus, 2),
            (self.get, 5),
            (self.range, 5),
            (self.head, 2),
            (self.list, 1),
            (self.delete, 1),
        ]
        functions, weights = zip(*operations, strict=True)
        while time.monotonic() < until:
            operation = self.rng.choices(functions, weights)[0]
            try:
                await operation(self.prefix + f"k{self.rng.randrange(KEYS_PER_CLIENT)}")
            except httpx.HTTPError as exc:
                self.tally.fail(f"{operation.__name__}: {exc!r}")
            self.tally.ops[operation.__name__] += 1

    def _new_body(self) -> tuple[Stored, bytes]:
        seed, size = self.rng.getrandbits(64), random_size(self.rng)
        data = body(seed, size)
        return Stored(seed, size, hashlib.sha256(data).hexdigest()), data

    async def put(self, key: str) -> None:
        stored, data = self._new_body()
        response = await self.http.put(f"/objects/{key}", content=data)
        self._check_stored(
            key, stored, response, 201, response.json() if response.is_success else None
        )

    async def form(self, key: str) -> None:
        stored, data = self._new_body()
        response = await self.http.post(
            "/objects", data={"key": key}, files={"file": ("f.bin", data)}
        )
        info = response.json()["objects"][0] if response.status_code == 201 else None
        self._check_stored(key, stored, response, 201, info)

    async def tus(self, key: str) -> None:
        """A resumable upload in two PATCHes."""
        stored, data = self._new_body()
        metadata = "key " + base64.b64encode(key.encode()).decode()
        headers = {"Tus-Resumable": "1.0.0"}
        created = await self.http.post(
            "/uploads/",
            headers={**headers, "Upload-Length": str(stored.size), "Upload-Metadata": metadata},
        )
        if created.status_code != 201:
            self.tally.fail(f"tus create {key}: {created.status_code} {created.text[:200]}")
            return
        half = stored.size // 2
        for offset, piece in ((0, data[:half]), (half, data[half:])):
            patched = await self.http.patch(
                created.headers["location"],
                content=piece,
                headers={
                    **headers,
                    "Upload-Offset": str(offset),
                    "Content-Type": "application/offset+octet-stream",
                },
            )
            if patched.status_code != 204:
                self.tally.fail(f"tus patch {key}: {patched.status_code} {patched.text[:200]}")
                self.stored.pop(key, None)
                return
        self.tally.bytes_up += stored.size
        self.stored[key] = stored

    def _check_stored(
        self, key: str, stored: Stored, response: httpx.Response, status: int, info: Any
    ) -> None:
        self.tally.bytes_up += stored.size
        if response.status_code != status or info["sha256"] != stored.sha256:
            self.tally.fail(f"store {key}: {response.status_code} {response.text[:200]}")
            self.stored.pop(key, None)  # unknown now: the final check reads it as it is
            return
        self.stored[key] = stored

    async def get(self, key: str) -> None:
        digest, size = hashlib.sha256(), 0
        async with self.http.stream("GET", f"/objects/{key}") as response:
            async for chunk in response.aiter_raw():
                digest.update(chunk)
                size += len(chunk)
        self.tally.bytes_down += size
        self._check_read(key, response.status_code, digest.hexdigest())

    def _check_read(self, key: str, status: int, sha256: str) -> None:
        expected = self.stored.get(key)
        if expected is None:
            if status != 404:
                self.tally.fail(f"get {key}: {status}, expected 404")
        elif status != 200 or sha256 != expected.sha256:
            self.tally.fail(f"get {key}: {status}, or the bytes differ")

    async def range(self, key: str) -> None:
        expected = self.stored.get(key)
        if expected is None or expected.size == 0:
            return await self.get(key)
        first = self.rng.randrange(expected.size)
        last = min(expected.size - 1, first + self.rng.randrange(4 * MiB))
        response = await self.http.get(
            f"/objects/{key}", headers={"Range": f"bytes={first}-{last}"}
        )
        self.tally.bytes_down += len(response.content)
        want = body(expected.seed, expected.size)[first : last + 1]
        if response.status_code != 206 or response.content != want:
            self.tally.fail(f"range {key} {first}-{last}: {response.status_code}")

    async def head(self, key: str) -> None:
        response = await self.http.head(f"/objects/{key}")
        expected = self.stored.get(key)
        want = 404 if expected is None else 200
        if response.status_code != want or (
            expected and response.headers["etag"] != f'"{expected.sha256}"'
        ):
            self.tally.fail(f"head {key}: {response.status_code}")

    async def list(self, key: str) -> None:
        response = await self.http.get("/objects", params={"prefix": self.prefix})
        listed = sorted(item["key"] for item in response.json()["objects"])
        if response.status_code != 200 or listed != sorted(self.stored):
            self.tally.fail(f"list {self.prefix}: {listed} != {sorted(self.stored)}")

    async def delete(self, key: str) -> None:
        response = await self.http.delete(f"/objects/{key}")
        want = 204 if key in self.stored else 404
        self.stored.pop(key, None)
        if response.status_code != want:
            self.tally.fail(f"delete {key}: {response.status_code}, expected {want}")


@dataclass
class Samples:
    rss: list[float] = field(default_factory=list)  # MiB
    fds: list[int] = field(default_factory=list)
    connections: list[int] = field(default_factory=list)


async def sample(pid: int, samples: Samples, stop: asyncio.Event) -> None:
    process = psutil.Process(pid)
    while not stop.is_set():
        samples.rss.append(process.memory_info().rss / MiB)
        samples.fds.append(process.num_fds())
        samples.connections.append(len(process.net_connections("tcp")))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)


async def soak(
    url: str, pid: int, clients: int, duration: float
) -> tuple[Tally, Samples, list[Client]]:
    tally, samples, stop = Tally(), Samples(), asyncio.Event()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
        sampler = asyncio.create_task(sample(pid, samples, stop))
        crowd = [Client(n, http, tally, seed=n) for n in range(clients)]
        until = time.monotonic() + duration
        await asyncio.gather(*(client.run(until) for client in crowd))
        await final_check(http, crowd, tally)
        stop.set()
        await sampler
    await settled(pid, samples)
    return tally, samples, crowd


async def settled(pid: int, samples: Samples) -> None:
    """The last sample, once the clients have closed their connections (10 s at most)."""
    process = psutil.Process(pid)
    deadline = time.monotonic() + 10
    while len(process.net_connections("tcp")) > samples.connections[0]:
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    samples.rss.append(process.memory_info().rss / MiB)
    samples.fds.append(process.num_fds())
    samples.connections.append(len(process.net_connections("tcp")))


async def final_check(http: httpx.AsyncClient, crowd: list[Client], tally: Tally) -> None:
    """Every object read back; the listing names exactly what the clients stored."""
    believed = {key: stored for client in crowd for key, stored in client.stored.items()}
    listed: list[str] = []
    cursor = None
    while True:
        params = {"prefix": "soak/", **({"cursor": cursor} if cursor else {})}
        page = (await http.get("/objects", params=params)).json()
        listed += [item["key"] for item in page["objects"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    if sorted(listed) != sorted(believed):
        tally.fail(f"final listing: {len(listed)} objects, the clients stored {len(believed)}")
    for key, stored in believed.items():
        response = await http.get(f"/objects/{key}")
        if hashlib.sha256(response.content).hexdigest() != stored.sha256:
            tally.fail(f"final read of {key}: {response.status_code}, or the bytes differ")


def leftovers(backend: str, data_dir: Path, moto: Any, bucket: str) -> int:
    if backend == "local":
        return len(list((data_dir / "tmp").iterdir()))
    return len(moto.s3().list_multipart_uploads(Bucket=bucket).get("Uploads", []))


@contextlib.contextmanager
def gateway(backend: str) -> Iterator[tuple[str, int, Any]]:
    if backend == "local":
        with running_gateway() as gw:
            yield gw.url, gw.process.pid, lambda: leftovers("local", gw.data_dir, None, "")
    else:
        with gateway_on_moto() as gw:
            moto, bucket = gw.moto, gw.bucket
            yield gw.url, gw.gateway.process.pid, lambda: leftovers("s3", Path(), moto, bucket)


def slope(values: list[float]) -> float:
    """Least-squares growth per minute of a series sampled each second."""
    if len(values) < 3:
        return 0.0
    return float(statistics.linear_regression(range(len(values)), values).slope * 60)


def run(backend: str, clients: int, duration: float) -> dict[str, Any]:
    with gateway(backend) as (url, pid, count_leftovers):
        started = time.monotonic()
        tally, samples, crowd = asyncio.run(soak(url, pid, clients, duration))
        elapsed = time.monotonic() - started
        left = count_leftovers()
    if left:
        tally.fail(f"{left} temp files or multipart uploads left behind")
    warm = samples.rss[len(samples.rss) // 6 :] or samples.rss  # past the first sixth
    return {
        "backend": backend,
        "clients": clients,
        "duration": duration,
        "elapsed": elapsed,
        "requests": sum(tally.ops.values()),
        "ops": dict(tally.ops),
        "errors": tally.errors,
        "objects": sum(len(client.stored) for client in crowd),
        "up_mib": tally.bytes_up / MiB,
        "down_mib": tally.bytes_down / MiB,
        "rss": (warm[0], max(samples.rss), samples.rss[-1], slope(warm)),
        "fds": (samples.fds[0], max(samples.fds), samples.fds[-1]),
        "connections": (samples.connections[0], max(samples.connections), samples.connections[-1]),
        "leftovers": left,
    }


def report(results: list[dict[str, Any]], command: str) -> str:
    lines = [
        SECTION,
        "",
        f"`{command}` on {platform.node() or 'this machine'}: {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; the gateway, moto and the clients share the machine. "
        "The end figures are taken once the clients have closed their connections.",
        "",
        "| backend | clients, seconds | requests | errors | objects checked | MiB up / down "
        "| RSS MiB after warm-up, max, end | RSS slope MiB/min | open fds start, max, end "
        "| TCP conns start, max, end | leftovers |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        rss, fds, conns = r["rss"], r["fds"], r["connections"]
        lines.append(
            f"| {r['backend']} | {r['clients']}, {r['duration']:g} | {r['requests']} "
            f"| {len(r['errors'])} | {r['objects']} | {r['up_mib']:.0f} / {r['down_mib']:.0f} "
            f"| {rss[0]:.0f}, {rss[1]:.0f}, {rss[2]:.0f} | {rss[3]:+.1f} "
            f"| {fds[0]}, {fds[1]}, {fds[2]} | {conns[0]}, {conns[1]}, {conns[2]} "
            f"| {r['leftovers']} |"
        )
    lines += [
        "",
        "Operations: "
        + "; ".join(
            f"{r['backend']}: " + ", ".join(f"{op} {n}" for op, n in sorted(r["ops"].items()))
            for r in results
        )
        + ".",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["local", "s3", "both"], default="both")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--duration", type=float, default=60)
    parser.add_argument("--write", type=Path, help="results file to put the figures in")
    args = parser.parse_args()
    backends = ["local", "s3"] if args.backend == "both" else [args.backend]
    results = [run(backend, args.clients, args.duration) for backend in backends]
    command = (
        "python bench/soak.py "
        + " ".join(sys.argv[1:]).replace(f"--write {args.write}", "").strip()
    )
    section = report(results, command.strip())
    print(section)
    for result in results:
        for error in result["errors"]:
            print(f"{result['backend']}: {error}", file=sys.stderr)
    if args.write:
        record("soak", section, args.write)
    sys.exit(1 if any(result["errors"] for result in results) else 0)


if __name__ == "__main__":
    main()
