"""Front-end overhead: what the WebSocket server, protocol and client add per request.

Prints one table. Each row compares a Pie operation with a baseline measured in the same run:

* `ping`         PieClient.ping through the server     vs a bare websockets echo of a msgpack frame
* `launch->ret`  launch a program and get its return   vs the same, one round trip (the floor)
* `upload 8 MiB` chunked add_program (256 KiB chunks)  vs sending the same bytes as raw frames

The process manager is an in-process stand-in whose programs return at once, so the numbers are
the front end alone (no sandbox, no model). Medians over many repetitions; the ratio column is
Pie / baseline.

    .venv/bin/python bench/frontend.py [--n 300]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import msgpack
import websockets

from pie.client import PieClient
from pie.programs import ProgramStore, python_manifest
from pie.server import Server, ServerOptions


class InstantProcesses:
    """Runs nothing: every launch returns its input as the result right away."""

    def __init__(self) -> None:
        self.callbacks: dict[str, object] = {}

    async def start(self) -> None:
        pass

    async def launch(self, program, input, user, on_event, token_limit=None) -> str:
        pid = uuid.uuid4().hex
        asyncio.get_running_loop().call_soon(on_event, pid, "return", input)
        return pid

    def attach(self, pid, on_event) -> None:
        pass

    def detach(self, pid) -> None:
        pass

    async def terminate(self, pid, reason) -> None:
        pass

    def signal(self, pid, message) -> None:
        pass

    def send_file(self, pid, name, data) -> None:
        pass

    def list(self, user=None) -> list[dict]:
        return []

    async def shutdown(self) -> None:
        pass


def us(samples: list[float]) -> float:
    return statistics.median(samples) * 1e6


async def timed(n: int, fn) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        await fn()
        out.append(time.perf_counter() - t0)
    return out


async def main(n: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="pie-bench-"))
    server = Server(
        InstantProcesses(), ProgramStore(root), ServerOptions(port=0, auth_enabled=False)
    )
    await server.start()

    async def echo(ws):  # echoes small frames, swallows bulk ones (the upload baseline)
        async for frame in ws:
            if len(frame) < 1024:
                await ws.send(frame)

    echo_server = await websockets.serve(echo, "127.0.0.1", 0, compression=None, max_size=None)
    echo_port = next(iter(echo_server.sockets)).getsockname()[1]
    rows = []
    async with (
        PieClient(f"ws://127.0.0.1:{server.port}") as client,
        websockets.connect(f"ws://127.0.0.1:{echo_port}", compression=None, max_size=None) as raw,
    ):
        frame = msgpack.packb({"type": "ping", "corr_id": 1})

        async def raw_rt():
            await raw.send(frame)
            await raw.recv()

        for _ in range(20):  # warm up both paths
            await client.ping()
            await raw_rt()
        pie_ping = await timed(n, client.ping)
        base_ping = await timed(n, raw_rt)
        rows.append(("ping", us(pie_ping), us(base_ping), "us"))

        src = "async def main(input):\n    return input\n"
        await client.install_program(python_manifest("echo", src), src.encode())

        async def launch_and_wait():
            p = await client.launch_process("echo", {"x": 1})
            await p.wait()

        for _ in range(20):
            await launch_and_wait()
        pie_launch = await timed(n, launch_and_wait)
        rows.append(("launch->ret", us(pie_launch), us(base_ping), "us"))

        payload = os.urandom(8 << 20)
        chunk = 256 * 1024

        async def upload():
            version = uuid.uuid4().hex[:8]
            manifest = f'[package]\nname = "big"\nversion = "v{version}"\n'
            await client.install_program(manifest, b"\0asm" + payload)

        async def raw_upload():
            for i in range(0, len(payload), chunk):
                await raw.send(payload[i : i + chunk])
            await raw_rt()

        reps = max(3, n // 60)
        pie_up = await timed(reps, upload)
        base_up = await timed(reps, raw_upload)
        rows.append(("upload 8 MiB", us(pie_up) / 1e3, us(base_up) / 1e3, "ms"))
    echo_server.close()
    await echo_server.wait_closed()
    await server.close()

    print(f"{'operation':<14} {'pie':>10} {'baseline':>10} {'ratio':>7}  unit   (median, n={n})")
    for name, pie_v, base_v, unit in rows:
        print(f"{name:<14} {pie_v:>10.1f} {base_v:>10.1f} {pie_v / base_v:>7.2f}  {unit}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=300, help="repetitions per latency row")
    try:
        import uvloop

        run = uvloop.run
    except ImportError:
        run = asyncio.run
    run(main(ap.parse_args().n))
