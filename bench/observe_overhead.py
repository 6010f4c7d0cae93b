"""CPU that gateway.observe's middleware adds to a streamed body, without the noise of a
whole server: the same 1 GiB of ASGI messages goes through a bare app and through the
middleware around it, and the best of several runs of each is compared.

    .venv/bin/python bench/observe_overhead.py [--chunk-kib 256] [--repeat 7]

uvicorn with httptools hands a fast upload over in chunks of about 256 KiB, so that is the
default; smaller chunks show the per-chunk cost more.
"""

import argparse
import asyncio
import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.lifecycle import Lifecycle
from gateway.observe import Observe

GiB = 1024**3


async def drain_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Reads the body to the end, then answers, as an upload route does."""
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 201, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


def feeder(chunk: bytes, count: int) -> Callable[[], Receive]:
    def make() -> Receive:
        left = count

        async def receive() -> Message:
            nonlocal left
            left -= 1
            return {"type": "http.request", "body": chunk, "more_body": left > 0}

        return receive

    return make


async def discard(message: Message) -> None:
    pass


def cpu_seconds(app: ASGIApp, make_receive: Callable[[], Receive]) -> float:
    scope: Scope = {
        "type": "http",
        "method": "PUT",
        "path": "/objects/bench.bin",
        "headers": [],
        "client": ("127.0.0.1", 1),
    }

    async def one_request() -> None:
        await app(scope, make_receive(), discard)

    started = time.process_time()
    asyncio.run(one_request())
    return time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--chunk-kib", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    chunk = bytes(args.chunk_kib * 1024)
    count = GiB // len(chunk)
    make_receive = feeder(chunk, count)
    observed = Observe(drain_app, Lifecycle())
    bare = min(cpu_seconds(drain_app, make_receive) for _ in range(args.repeat))
    wrapped = min(cpu_seconds(observed, make_receive) for _ in range(args.repeat))
    extra = wrapped - bare
    print(f"1 GiB in {count} chunks of {args.chunk_kib} KiB, best of {args.repeat}")
    print(f"bare app:        {bare * 1000:8.2f} ms CPU")
    print(f"with Observe:    {wrapped * 1000:8.2f} ms CPU")
    print(
        f"added:           {extra * 1000:8.2f} ms CPU per GiB, {extra / count * 1e9:.0f} ns a chunk"
    )


if __name__ == "__main__":
    main()
