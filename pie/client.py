"""An async Python client for a Pie engine (`pie run`, the tests and users call it).

    from pie.auth import load_private_key
    from pie.client import PieClient

    async with PieClient("ws://127.0.0.1:8080") as client:
        await client.authenticate("alice", load_private_key("~/.ssh/id_ed25519"))
        await client.install_path("hello.py")
        process = await client.launch_process("hello", {"name": "pie"})
        async for event in process:          # stdout, stderr, message, file ... then return/error
            print(event.kind, event.value)
        print(process.result)

It speaks the protocol of `pie/protocol.py`: one listener task routes each `response` to the
request awaiting its `corr_id`, and each process event to that process's queue (events that
arrive before the launch response are kept, never lost). `file` chunks are reassembled into one
`file` event whose value is the bytes.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import websockets

from pie import protocol as P
from pie.auth import PrivateKey, load_private_key, sign_challenge
from pie.programs import digest_matches, digest_of, pack_path, parse_manifest

log = logging.getLogger(__name__)


class PieError(Exception):
    """The server refused a request; the message is the server's explanation."""


class ProcessFailed(PieError):
    """The process ended with an `error` event."""

    def __init__(self, process_id: str, message: str):
        super().__init__(message)
        self.process_id = process_id


@dataclass(frozen=True, slots=True)
class Event:
    kind: str  # stdout, stderr, message, file, return, error
    value: str | bytes

    @property
    def terminal(self) -> bool:
        return self.kind in P.TERMINAL_EVENTS


_CLOSED = Event("error", "Connection to the engine closed.")


class Process:
    """A launched or attached process: its event stream and controls."""

    def __init__(self, client: PieClient, process_id: str):
        self.client = client
        self.id = process_id
        self._queue = client._queue_for(process_id)
        self.result: str | None = None
        self.error: str | None = None
        self.done = False

    async def recv(self) -> Event:
        """The next event; after the terminal one, raises `EOFError`."""
        if self.done:
            raise EOFError(f"Process {self.id} has ended.")
        event = await self._queue.get()
        if event.kind == "return":
            self.result, self.done = str(event.value), True
        elif event.kind == "error":
            self.error, self.done = str(event.value), True
        if self.done:
            self.client._queues.pop(self.id, None)
        return event

    def __aiter__(self) -> Process:
        return self

    async def __anext__(self) -> Event:
        if self.done:
            raise StopAsyncIteration
        return await self.recv()

    async def wait(self) -> str:
        """Drain events until the end; return the result or raise `ProcessFailed`."""
        async for _ in self:
            pass
        if self.error is not None:
            raise ProcessFailed(self.id, self.error)
        return self.result or ""

    async def signal(self, message: str) -> None:
        await self.client.signal_process(self.id, message)

    async def transfer_file(self, data: bytes) -> None:
        await self.client.transfer_file(self.id, data)

    async def terminate(self) -> None:
        await self.client.terminate_process(self.id)


class PieClient:
    """One WebSocket connection to an engine; use as an async context manager."""

    def __init__(self, uri: str, *, identity: str | None = None, max_size: int | None = 1 << 30):
        self.uri = uri
        self.identity = identity
        self.max_size = max_size
        self.ws: Any = None
        self._listener: asyncio.Task | None = None
        self._next_id = 0
        self._pending: dict[int, asyncio.Future] = {}
        self._queues: dict[str, asyncio.Queue] = {}
        self._files: dict[tuple[str, str], list[bytes]] = {}
        self._closed = False

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        headers = {"x-pie-identity": self.identity} if self.identity else None
        try:
            self.ws = await websockets.connect(
                self.uri, additional_headers=headers, max_size=self.max_size, compression=None
            )
        except (OSError, websockets.InvalidHandshake) as e:
            raise ConnectionError(
                f"Cannot connect to {self.uri} ({e}); is `pie serve` running there?"
            ) from None
        self._listener = asyncio.create_task(self._listen())

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self._listener is not None:
            try:
                await asyncio.wait_for(self._listener, 2.0)
            except (TimeoutError, asyncio.CancelledError):
                self._listener.cancel()
        self._fail_all()

    # -- plumbing --------------------------------------------------------------------------

    def _queue_for(self, pid: str) -> asyncio.Queue:
        q = self._queues.get(pid)
        if q is None:
            q = self._queues[pid] = asyncio.Queue()
            if self._closed:
                q.put_nowait(_CLOSED)
        return q

    async def _listen(self) -> None:
        try:
            async for frame in self.ws:
                if not isinstance(frame, bytes):
                    continue
                try:
                    msg = P.decode_server(frame)
                except Exception:  # noqa: BLE001 - one bad frame must not end the session
                    log.warning("undecodable frame from server dropped")
                    continue
                self._route(msg)
        except websockets.ConnectionClosed:
            pass
        finally:
            self._fail_all()

    def _route(self, msg: P.ServerMessage) -> None:
        if isinstance(msg, P.Response):
            fut = self._pending.pop(msg.corr_id, None)
            if fut is not None and not fut.done():
                fut.set_result((msg.ok, msg.result))
        elif isinstance(msg, P.ProcessEvent):
            self._queue_for(msg.process_id).put_nowait(Event(msg.event, msg.value))
        elif isinstance(msg, P.FileChunk):
            key = (msg.process_id, msg.file_hash)
            parts = self._files.setdefault(key, [])
            if msg.chunk_index != len(parts):
                log.warning("out-of-order file chunk from %s dropped", msg.process_id)
                self._files.pop(key, None)
                return
            parts.append(msg.chunk_data)
            if len(parts) == msg.total_chunks:
                data = b"".join(self._files.pop(key))
                if digest_matches(data, msg.file_hash):
                    self._queue_for(msg.process_id).put_nowait(Event("file", data))

    def _fail_all(self) -> None:
        self._closed = True
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(ConnectionError("Connection to the engine closed."))
        self._pending.clear()
        for q in self._queues.values():
            q.put_nowait(_CLOSED)

    async def _send(self, msg: P.ClientMessage) -> None:
        if self._closed or self.ws is None:
            raise ConnectionError("Not connected to the engine.")
        await self.ws.send(P.encode_client(msg))

    def _corr_id(self) -> int:
        self._next_id = (self._next_id + 1) & 0xFFFFFFFF or 1
        return self._next_id

    async def _request(self, make: Any, *, check: bool = True, **fields: Any) -> str:
        cid = self._corr_id()
        fut = asyncio.get_running_loop().create_future()
        self._pending[cid] = fut
        await self._send(make(corr_id=cid, **fields))
        ok, result = await fut
        if check and not ok:
            raise PieError(result)
        return result

    # -- auth ------------------------------------------------------------------------------

    async def authenticate(
        self, username: str, private_key: PrivateKey | str | Path | None = None
    ) -> None:
        """Identify as `username`, proving it with the private key when the engine asks."""
        result = await self._request(P.AuthIdentify, username=username)
        if result.startswith("Authenticated"):
            return
        if private_key is None:
            raise PieError("The engine requires public-key authentication; pass a private key.")
        if isinstance(private_key, (str, Path)):
            private_key = load_private_key(private_key)
        signature = sign_challenge(private_key, base64.b64decode(result))
        await self._request(P.AuthProve, signature=base64.b64encode(signature).decode())

    async def auth_by_token(self, token: str) -> None:
        await self._request(P.AuthByToken, token=token)

    # -- requests --------------------------------------------------------------------------

    async def ping(self) -> str:
        return await self._request(P.Ping)

    async def query(self, subject: str, record: str = "") -> str:
        return await self._request(P.Query, subject=subject, record=record)

    async def model_status(self) -> dict:
        return json.loads(await self.query("model_status"))

    async def check_program(self, inferlet: str, wasm_hash: str | None = None) -> bool:
        """Whether `name[@version]` (optionally with exactly these bytes) is installed."""
        result = await self._request(P.CheckProgram, name=inferlet, wasm_hash=wasm_hash)
        return result == "true"

    async def install_program(
        self, manifest: str, payload: bytes, force_overwrite: bool = False
    ) -> str:
        """Upload a program in chunks; returns its `name@version`."""
        parsed = parse_manifest(manifest)
        digest = digest_of(payload)
        chunks = P.split_chunks(payload)
        cid = self._corr_id()
        fut = asyncio.get_running_loop().create_future()
        self._pending[cid] = fut
        for i, chunk in enumerate(chunks):
            await self._send(
                P.AddProgram(
                    corr_id=cid,
                    program_hash=digest,
                    manifest=manifest,
                    chunk_index=i,
                    total_chunks=len(chunks),
                    chunk_data=chunk,
                    force_overwrite=force_overwrite,
                )
            )
        ok, result = await fut
        if not ok:
            raise PieError(result)
        return f"{parsed['package']['name']}@{parsed['package']['version']}"

    async def install_path(
        self,
        path: str | Path,
        manifest_path: str | Path | None = None,
        force_overwrite: bool = False,
    ) -> str:
        """Upload a local `.py` file, `.wasm` file or inferlet directory; returns name@version."""
        manifest, payload = pack_path(path, manifest_path)
        return await self.install_program(manifest, payload, force_overwrite)

    async def launch_process(
        self,
        inferlet: str,
        input: dict | str | None = None,
        capture_outputs: bool = True,
        token_budget: int | None = None,
    ) -> Process:
        text = input if isinstance(input, str) else json.dumps(input or {})
        pid = await self._request(
            P.LaunchProcess,
            inferlet=inferlet,
            input=text,
            capture_outputs=capture_outputs,
            token_budget=token_budget,
        )
        return Process(self, pid)

    async def launch_processes(
        self, inferlet: str, inputs: list[dict | str], token_budgets: list[int | None] | None = None
    ) -> list[Process]:
        texts = [i if isinstance(i, str) else json.dumps(i) for i in inputs]
        result = await self._request(
            P.LaunchProcesses, inferlet=inferlet, inputs=texts, token_budgets=token_budgets
        )
        return [Process(self, pid) for pid in json.loads(result)]

    async def run_processes(
        self, inferlet: str, inputs: list[dict | str], token_budgets: list[int | None] | None = None
    ) -> list[str]:
        texts = [i if isinstance(i, str) else json.dumps(i) for i in inputs]
        result = await self._request(
            P.RunProcesses, inferlet=inferlet, inputs=texts, token_budgets=token_budgets
        )
        return json.loads(result)

    async def attach_process(self, process_id: str) -> Process:
        await self._request(P.AttachProcess, process_id=process_id)
        return Process(self, process_id)

    async def list_processes(self) -> list[dict]:
        return json.loads(await self._request(P.ListProcesses))

    async def terminate_process(self, process_id: str) -> None:
        await self._request(P.TerminateProcess, process_id=process_id)

    async def signal_process(self, process_id: str, message: str) -> None:
        await self._send(P.SignalProcess(process_id=process_id, message=message))

    async def transfer_file(self, process_id: str, data: bytes) -> None:
        digest = digest_of(data)
        chunks = P.split_chunks(data)
        for i, chunk in enumerate(chunks):
            await self._send(
                P.TransferFile(
                    process_id=process_id,
                    file_hash=digest,
                    chunk_index=i,
                    total_chunks=len(chunks),
                    chunk_data=chunk,
                )
            )
