"""The WebSocket front end: connections, authentication, uploads and process events.

One `Server` listens on `[server].host:port` and accepts the WebSocket upgrade on `/` and on
`/v1/ws`. Each connection becomes a `Session` that decodes frames (`pie/protocol.py`), answers
each request by its `corr_id`, and streams the events of the processes it launched or attached
to. The controller (`pie/controller.py`) builds the server from the program store, the keystore
and the process manager, which does the actual running:

    client frame -> Session.dispatch -> ProgramStore / ProcessManager
    ProcessManager on_event(pid, kind, value) -> Session outbox -> process_event / file frames

Rules a client can rely on:
* Until a session authenticates, every request gets only an auth error (`ok = false`). With
  auth disabled the session starts authenticated as its `x-pie-identity` header (or
  "anonymous"), and `auth_identify` just renames it. A failed proof or token is answered after
  a random 1-3 s delay.
* A malformed frame gets an error response (with its `corr_id` when one can be read) and the
  connection stays up.
* A dropped connection detaches its processes: they keep running, the process manager buffers
  their events, and `attach_process` from a new connection of the same user replays them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import random
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import websockets
from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request

from pie import protocol as P
from pie.auth import INTERNAL_USER, Keystore, decode_signature, new_challenge
from pie.programs import ProgramError, ProgramStore, digest_matches, digest_of, split_ref

log = logging.getLogger(__name__)

WS_PATHS = ("/", "/v1/ws")
IDENTITY_HEADER = "x-pie-identity"
MAX_ORPHAN_EVENTS = 4096  # per process, oldest dropped first
MAX_ORPHAN_PROCESSES = 1024
MAX_LAUNCH_RECORDS = 65536
MAX_FRAME_BYTES = 64 << 20
MAX_OUTBOX = 65536  # messages queued for one client before it is considered gone
NOT_AUTHENTICATED = (
    "Not authenticated: send auth_identify then auth_prove (or auth_by_token) first."
)
AUTH_DISABLED_OK = "Authenticated (Engine disabled authentication)"


@dataclass
class ServerOptions:
    host: str = "127.0.0.1"
    port: int = 8080
    auth_enabled: bool = True
    internal_token: str | None = None
    max_upload_mb: int = 256
    auth_failure_delay: tuple[float, float] = (1.0, 3.0)  # seconds, uniform


@dataclass
class _Launch:
    user: str
    program: str
    input: str
    started: float = field(default_factory=time.time)


@dataclass
class _Upload:
    corr_id: int
    total_chunks: int
    next_index: int = 0
    size: int = 0
    parts: list[bytes] = field(default_factory=list)
    failed: bool = False


class Server:
    """Owns the listening socket and every live `Session`."""

    def __init__(
        self,
        processes: Any,
        programs: ProgramStore,
        options: ServerOptions | None = None,
        *,
        keystore: Keystore | None = None,
        stats: Callable[[], dict[str, dict]] | None = None,
    ):
        self.processes = processes
        self.programs = programs
        self.options = options or ServerOptions()
        self.keystore = keystore
        self.stats = stats or (dict)
        self.sessions: set[Session] = set()
        self.attached: dict[str, Session] = {}  # pid -> the session receiving its events
        # events that reached a session as its connection dropped, kept for the next attach
        self.orphans: OrderedDict[str, tuple[str, deque]] = OrderedDict()  # pid -> (user, msgs)
        # processes launched through this server and not yet seen to end: who may touch them
        self.launched: OrderedDict[str, _Launch] = OrderedDict()
        self.install_lock = asyncio.Lock()  # one store change at a time
        self._ws_server: Any = None
        self.port: int = self.options.port

    @property
    def max_upload_bytes(self) -> int:
        return self.options.max_upload_mb * 1024 * 1024

    async def start(self) -> None:
        # Clients chunk uploads (256 KiB); a JSON client may send a small program in one base64
        # frame. Bounded so that no connection, authenticated or not, can make us buffer more.
        max_frame = min(self.max_upload_bytes * 4 // 3 + (1 << 20), MAX_FRAME_BYTES)
        self._ws_server = await websockets.serve(
            self._handle,
            self.options.host,
            self.options.port,
            process_request=self._check_path,
            max_size=max_frame,
            compression=None,
        )
        sock = next(iter(self._ws_server.sockets))
        self.port = sock.getsockname()[1]
        log.info("listening on ws://%s:%d", self.options.host, self.port)

    async def close(self) -> None:
        if self._ws_server is not None:
            self._ws_server.close()
            await self._ws_server.wait_closed()
            self._ws_server = None
        for session in list(self.sessions):
            session.detach_all()

    def _check_path(self, connection: ServerConnection, request: Request) -> Any:
        path = request.path.split("?", 1)[0].rstrip("/") or "/"
        if path not in WS_PATHS:
            return connection.respond(404, "Pie serves WebSocket clients on / and /v1/ws.\n")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        identity = ws.request.headers.get(IDENTITY_HEADER) if ws.request else None
        session = Session(self, ws, identity)
        self.sessions.add(session)
        try:
            await session.serve()
        finally:
            self.sessions.discard(session)
            session.detach_all()


class Session:
    """One client connection: its user, uploads in flight and attached processes."""

    def __init__(self, server: Server, ws: ServerConnection, identity: str | None):
        self.server = server
        self.ws = ws
        self.opts = server.options
        self.user: str | None = None
        if not self.opts.auth_enabled:
            self.user = identity or "anonymous"
        self.text = False  # answer in JSON text frames once the client speaks them
        self.outbox: asyncio.Queue = asyncio.Queue()
        self.closed = False
        self._closing = False
        self._unsent: list[P.ServerMessage] = []
        self.tasks: set[asyncio.Task] = set()
        self._challenge: tuple[str, bytes] | None = None
        self._uploads: dict[str, _Upload] = {}
        self._files: dict[tuple[str, str], _Upload] = {}

    # -- plumbing --------------------------------------------------------------------------

    async def serve(self) -> None:
        writer = asyncio.create_task(self._write_loop())
        try:
            async for frame in self.ws:
                if isinstance(frame, str):
                    self.text = True
                try:
                    msg = P.decode_client(frame)
                except P.ProtocolError as e:
                    if e.corr_id is not None:
                        self.reply(e.corr_id, False, str(e))
                    else:
                        self.reply(0, False, str(e))
                    continue
                try:
                    await self.dispatch(msg)
                except Exception as e:  # a handler bug must not take the connection down
                    log.exception("error handling %s", type(msg).__name__)
                    cid = getattr(msg, "corr_id", None)
                    if cid is not None:
                        self.reply(cid, False, f"Internal error: {e}")
        except websockets.ConnectionClosed:
            pass
        finally:
            self.closed = True
            for t in list(self.tasks):
                t.cancel()
            self.outbox.put_nowait(None)
            try:
                await asyncio.wait_for(writer, 1.0)
            except (TimeoutError, asyncio.CancelledError, Exception):  # noqa: BLE001 - closing anyway
                writer.cancel()
            leftovers = self._unsent
            while not self.outbox.empty():
                msg = self.outbox.get_nowait()
                if msg is not None:
                    leftovers.append(msg)
            for msg in leftovers:
                self._stash(msg)

    async def _write_loop(self) -> None:
        outbox = self.outbox
        while True:
            batch = [await outbox.get()]
            while not outbox.empty():  # everything queued meanwhile leaves in one write
                batch.append(outbox.get_nowait())
            tail: list[P.ServerMessage] = []
            stop = None in batch
            if stop:  # closing: what was queued after the end marker is kept, unsent
                end = batch.index(None)
                tail = [m for m in batch[end + 1:] if m is not None]
                batch = batch[:end]
            if batch:
                try:
                    await self._write(batch)
                except websockets.ConnectionClosed:
                    self._unsent.extend(batch)
                    stop = True
            if stop:
                self._unsent.extend(tail)
                return

    async def _write(self, msgs: list[P.ServerMessage]) -> None:
        """Send frames, several at once in a single socket write.

        A decode step wakes every guest of a batch and each streams one event; one write per
        frame would cost a send system call (and, on loopback, the receiver's TCP processing)
        per event.
        """
        ws, text = self.ws, self.text
        if len(msgs) == 1:
            await ws.send(P.encode_server(msgs[0], text))
            return
        frames = [P.encode_server(m, text) for m in msgs]
        protocol = ws.protocol
        put = protocol.send_text if text else protocol.send_binary
        async with ws.send_context():
            for frame in frames:
                put(frame.encode() if text else frame)
            chunks = protocol.data_to_send()
            if all(chunks):  # data frames only (an empty chunk would ask for end-of-stream)
                ws.transport.write(b"".join(chunks))
            else:  # leave them to the connection's own writer
                protocol.writes.extend(chunks)

    def send(self, msg: P.ServerMessage) -> None:
        if self.closed:
            self._stash(msg)
            return
        self.outbox.put_nowait(msg)
        if self.outbox.qsize() > MAX_OUTBOX and not self._closing:
            # a client that does not read must not grow our memory without bound: drop it,
            # its processes detach and keep their latest events for the next attach
            self._closing = True
            log.warning("closing a client that is %d messages behind", self.outbox.qsize())
            self.spawn(self.ws.close(1008, "Client too slow: it stopped reading events."))

    def _stash(self, msg: P.ServerMessage) -> None:
        """Keep a process event the dropped client never got, for whoever attaches next."""
        if not isinstance(msg, (P.ProcessEvent, P.FileChunk)) or self.user is None:
            return
        orphans = self.server.orphans
        entry = orphans.get(msg.process_id)
        if entry is None:
            entry = orphans[msg.process_id] = (self.user, deque(maxlen=MAX_ORPHAN_EVENTS))
            while len(orphans) > MAX_ORPHAN_PROCESSES:
                orphans.popitem(last=False)
        entry[1].append(msg)

    def reply(self, corr_id: int, ok: bool, result: str) -> None:
        self.send(P.Response(corr_id=corr_id, ok=ok, result=result))

    def spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # -- process events --------------------------------------------------------------------

    def on_event(self, pid: str, kind: str, value: Any) -> None:
        """Called by the process manager for every event of a process this session holds."""
        if kind == "file":
            _name, data = value
            digest = digest_of(bytes(data))
            chunks = P.split_chunks(bytes(data))
            for i, chunk in enumerate(chunks):
                self.send(P.FileChunk(pid, digest, i, len(chunks), chunk))
            return
        if not isinstance(value, str):
            value = (
                json.dumps(value)
                if not isinstance(value, bytes)
                else value.decode("utf-8", "replace")
            )
        self.send(P.ProcessEvent(process_id=pid, event=kind, value=value))
        if kind in P.TERMINAL_EVENTS:
            # delivered (or stashed for the next attach, which then owns it): forget the launch
            self.server.launched.pop(pid, None)
            if self.server.attached.get(pid) is self:
                del self.server.attached[pid]

    def detach_all(self) -> None:
        for pid, session in list(self.server.attached.items()):
            if session is self:
                del self.server.attached[pid]
                try:
                    self.server.processes.detach(pid)
                except Exception:  # the process may have just ended
                    log.debug("detach %s failed", pid, exc_info=True)

    def _owns(self, pid: str) -> bool:
        record = self.server.launched.get(pid)
        if record is not None:
            return record.user == self.user
        orphan = self.server.orphans.get(pid)
        if orphan is not None:
            return orphan[0] == self.user
        return any(p["id"] == pid for p in self._list())

    def _list(self) -> list[dict]:
        """This user's live processes in the wire shape: id, username, program, input, ..."""
        try:
            raw = self.server.processes.list(user=self.user)
        except Exception:
            log.exception("process list failed")
            return []
        now = time.time()
        out = []
        for p in raw:
            pid = p.get("id") or p.get("pid")
            record = self.server.launched.get(pid)
            started = p.get("started_at") or (record.started if record else now)
            out.append(
                {
                    "id": pid,
                    "username": p.get("username") or p.get("user") or self.user,
                    "program": p.get("program") or (record.program if record else ""),
                    "input": p.get("input") or (record.input if record else ""),
                    "elapsed_secs": round(p.get("elapsed_secs") or now - started, 3),
                    "state": p.get("state", "running"),
                    "attached": self.server.attached.get(pid) is not None,
                }
            )
        return out

    def _record_launch(self, pid: str, program: Any, input_text: str) -> None:
        launched = self.server.launched
        launched[pid] = _Launch(self.user or "", program.ref, input_text)
        while len(launched) > MAX_LAUNCH_RECORDS:
            launched.popitem(last=False)

    # -- dispatch --------------------------------------------------------------------------

    async def dispatch(self, msg: P.ClientMessage) -> None:
        if isinstance(msg, P.AUTH_MESSAGES):
            await self._auth(msg)
            return
        if self.user is None:
            cid = getattr(msg, "corr_id", None)
            if cid is not None:
                self.reply(cid, False, NOT_AUTHENTICATED)
            else:
                log.info("dropping %s from an unauthenticated session", type(msg).__name__)
            return
        match msg:
            case P.Ping():
                self.reply(msg.corr_id, True, "Pong")
            case P.CheckProgram():
                self.reply(msg.corr_id, True, "true" if self._check_program(msg) else "false")
            case P.Query():
                self._query(msg)
            case P.AddProgram():
                await self._add_program(msg)
            case P.LaunchProcess():
                self.spawn(self._launch(msg))
            case P.LaunchProcesses():
                self.spawn(self._launch_many(msg))
            case P.RunProcesses():
                self.spawn(self._run_many(msg))
            case P.AttachProcess():
                self._attach(msg)
            case P.TerminateProcess():
                self.spawn(self._terminate(msg))
            case P.SignalProcess():
                if self._owns(msg.process_id):
                    with contextlib.suppress(KeyError):  # it ended meanwhile: nobody to tell
                        self.server.processes.signal(msg.process_id, msg.message)
                else:
                    log.info("signal to unknown process %s dropped", msg.process_id)
            case P.TransferFile():
                self._transfer_file(msg)
            case P.ListProcesses():
                self.reply(msg.corr_id, True, json.dumps(self._list(), default=str))
            case P.LaunchDaemon() | P.RegisterMcpServer():
                self.reply(
                    msg.corr_id,
                    False,
                    f"{msg.__struct_config__.tag} is not supported by this engine.",
                )

    # -- auth ------------------------------------------------------------------------------

    async def _fail_auth(self, corr_id: int, reason: str) -> None:
        lo, hi = self.opts.auth_failure_delay
        await asyncio.sleep(random.uniform(lo, hi))
        self.reply(corr_id, False, reason)

    async def _auth(self, msg: Any) -> None:
        if isinstance(msg, P.AuthByToken):
            token = self.opts.internal_token
            if token and secrets.compare_digest(msg.token.encode(), token.encode()):
                self.user = INTERNAL_USER
                self.reply(msg.corr_id, True, "Authenticated")
            else:
                await self._fail_auth(msg.corr_id, "Invalid token.")
            return
        if isinstance(msg, P.AuthIdentify):
            if not msg.username:
                self.reply(msg.corr_id, False, "auth_identify needs a non-empty username.")
                return
            if not self.opts.auth_enabled:
                self.user = msg.username
                self.reply(msg.corr_id, True, AUTH_DISABLED_OK)
                return
            keystore = self._keystore()
            if keystore is None or not keystore.public_keys(msg.username):
                await self._fail_auth(
                    msg.corr_id,
                    f"User {msg.username!r} is not authorised on this engine; its operator can "
                    "add a key with `pie auth add`.",
                )
                return
            challenge = new_challenge()
            self._challenge = (msg.username, challenge)
            self.reply(msg.corr_id, True, base64.b64encode(challenge).decode())
            return
        # AuthProve
        if self._challenge is None:
            self.reply(msg.corr_id, False, "Send auth_identify before auth_prove.")
            return
        username, challenge = self._challenge
        self._challenge = None  # one proof per challenge
        signature = decode_signature(msg.signature)
        keystore = self._keystore()
        if (
            signature is None
            or keystore is None
            or not keystore.verify(username, challenge, signature)
        ):
            await self._fail_auth(msg.corr_id, "Signature verification failed.")
            return
        self.user = username
        self.reply(msg.corr_id, True, "Authenticated")

    def _keystore(self) -> Keystore | None:
        """Re-read the keystore so `pie auth add` takes effect without a restart."""
        ks = self.server.keystore
        if ks is None:
            return None
        try:
            return Keystore.load(ks.path)
        except Exception:
            log.exception("keystore unreadable; using the copy loaded at boot")
            return ks

    # -- programs --------------------------------------------------------------------------

    def _check_program(self, msg: P.CheckProgram) -> bool:
        store = self.server.programs
        name, version = split_ref(msg.name)
        version = msg.version or version
        if not name:
            return bool(msg.wasm_hash) and store.has_digest(msg.wasm_hash)
        if version == "latest":
            version = None
        if not store.exists(name, version):
            return False
        if msg.wasm_hash:
            return digest_matches(store.get(name, version).payload, msg.wasm_hash)
        return True

    async def _add_program(self, msg: P.AddProgram) -> None:
        key = msg.program_hash
        up = self._uploads.get(key)
        if up is None:
            if msg.chunk_index != 0:
                self.reply(
                    msg.corr_id,
                    False,
                    f"Upload {key[:16]} starts at chunk {msg.chunk_index}; the first chunk "
                    "must have chunk_index 0.",
                )
                return
            if msg.total_chunks < 1:
                self.reply(msg.corr_id, False, "add_program needs total_chunks >= 1.")
                return
            up = self._uploads[key] = _Upload(msg.corr_id, msg.total_chunks)
        last = msg.chunk_index == up.total_chunks - 1
        if up.failed:  # the error was answered already: swallow the rest of the upload
            if last or msg.chunk_index >= up.total_chunks:
                del self._uploads[key]
            return
        error = None
        if msg.total_chunks != up.total_chunks:
            error = (
                f"Upload {key[:16]} changed total_chunks from {up.total_chunks} to "
                f"{msg.total_chunks}; send every chunk with the same total."
            )
        elif msg.chunk_index != up.next_index:
            error = (
                f"Upload {key[:16]} got chunk {msg.chunk_index}, expected "
                f"{up.next_index}; send chunks in order."
            )
        elif up.size + len(msg.chunk_data) > self.server.max_upload_bytes:
            error = (
                f"Upload exceeds max_upload_mb = {self.opts.max_upload_mb} MiB; raise "
                "[runtime].max_upload_mb or ship a smaller program."
            )
        if error is not None:
            up.failed = True
            up.parts.clear()
            if last:
                del self._uploads[key]
            self.reply(msg.corr_id, False, error)
            return
        up.parts.append(msg.chunk_data)
        up.size += len(msg.chunk_data)
        up.next_index += 1
        if not last:
            return
        del self._uploads[key]
        payload = b"".join(up.parts)
        try:
            # hashing and writing a large upload must not stall every inferlet on the loop
            async with self.server.install_lock:
                program = await asyncio.to_thread(
                    self.server.programs.add,
                    msg.manifest,
                    payload,
                    expected_digest=key or None,
                    force=msg.force_overwrite,
                )
        except ProgramError as e:
            self.reply(msg.corr_id, False, str(e))
            return
        log.info("installed %s (%d bytes, %s)", program.ref, len(payload), program.kind)
        self.reply(msg.corr_id, True, "Program installed successfully")

    # -- processes -------------------------------------------------------------------------

    def _input_json(self, text: str) -> str:
        text = text if text.strip() else "{}"
        try:
            json.loads(text)
        except ValueError as e:
            raise ProgramError(f"The process input is not JSON ({e}); send a JSON object.")
        return text

    async def _launch_one(
        self, inferlet: str, input_text: str, capture: bool, token_budget: int | None
    ) -> str:
        program = self.server.programs.get(inferlet)
        input_text = self._input_json(input_text)
        if token_budget is not None and token_budget <= 0:
            raise ProgramError("token_budget must be a positive number of tokens.")
        callback = self.on_event if capture else _discard
        pid = await self.server.processes.launch(
            program, input_text, self.user, callback, token_limit=token_budget
        )
        self._record_launch(pid, program, input_text)
        if capture:
            self.server.attached[pid] = self
        return pid

    async def _launch(self, msg: P.LaunchProcess) -> None:
        try:
            pid = await self._launch_one(
                msg.inferlet, msg.input, msg.capture_outputs, msg.token_budget
            )
        except Exception as e:  # noqa: BLE001 - the process manager's refusal goes to the client
            self._launch_error(msg.corr_id, e)
            return
        self.reply(msg.corr_id, True, pid if msg.capture_outputs else "")

    def _launch_error(self, corr_id: int, e: Exception) -> None:
        if not isinstance(e, (ProgramError, ValueError, KeyError, RuntimeError)):
            log.exception("launch failed")
        text = str(e) if not isinstance(e, KeyError) else str(e.args[0] if e.args else e)
        self.reply(corr_id, False, text or type(e).__name__)

    def _budgets(self, n: int, budgets: list | None) -> list[int | None]:
        if budgets is None:
            return [None] * n
        if len(budgets) != n:
            raise ProgramError(f"token_budgets has {len(budgets)} entries for {n} inputs.")
        return list(budgets)

    async def _launch_many(self, msg: P.LaunchProcesses) -> None:
        pids = []
        try:
            for inp, budget in zip(msg.inputs, self._budgets(len(msg.inputs), msg.token_budgets)):
                pids.append(await self._launch_one(msg.inferlet, inp, msg.capture_outputs, budget))
        except Exception as e:  # noqa: BLE001 - the process manager's refusal goes to the client
            self._launch_error(msg.corr_id, e)
            return
        self.reply(msg.corr_id, True, json.dumps(pids if msg.capture_outputs else [""] * len(pids)))

    async def _run_many(self, msg: P.RunProcesses) -> None:
        loop = asyncio.get_running_loop()
        results: dict[str, asyncio.Future] = {}

        def collect(pid: str, kind: str, value: Any) -> None:
            fut = results.setdefault(pid, loop.create_future())
            if kind in P.TERMINAL_EVENTS and not fut.done():
                fut.set_result((kind, value))

        pids = []
        try:
            budgets = self._budgets(len(msg.inputs), msg.token_budgets)
            program = self.server.programs.get(msg.inferlet)
            for inp, budget in zip(msg.inputs, budgets):
                pid = await self.server.processes.launch(
                    program, self._input_json(inp), self.user, collect, token_limit=budget
                )
                self._record_launch(pid, program, inp)
                results.setdefault(pid, loop.create_future())
                pids.append(pid)
            outputs = []
            for pid in pids:
                kind, value = await results[pid]
                if kind == "error":
                    raise RuntimeError(f"Process {pid} failed: {value}")
                outputs.append(value)
        except Exception as e:  # noqa: BLE001 - the process manager's refusal goes to the client
            self._launch_error(msg.corr_id, e)
            return
        self.reply(msg.corr_id, True, json.dumps(outputs))

    def _attach(self, msg: P.AttachProcess) -> None:
        pid = msg.process_id
        if not self._owns(pid):
            self.reply(
                msg.corr_id,
                False,
                f"No process {pid} of yours is running; `list_processes` shows them.",
            )
            return
        holder = self.server.attached.get(pid)
        if holder is self:
            self.reply(msg.corr_id, True, "Attached")
            return
        if holder is not None:
            self.reply(
                msg.corr_id,
                False,
                f"Process {pid} is attached to another client; close that connection first.",
            )
            return
        orphan = self.server.orphans.pop(pid, None)
        if orphan is not None:
            for event in orphan[1]:
                self.send(event)
            if any(
                isinstance(e, P.ProcessEvent) and e.event in P.TERMINAL_EVENTS for e in orphan[1]
            ):
                self.reply(msg.corr_id, True, "Attached")  # it already ended: nothing to follow
                return
        self.server.attached[pid] = self
        try:
            self.server.processes.attach(pid, self.on_event)
        except KeyError:  # the manager forgot it: it ended long ago
            self.server.attached.pop(pid, None)
            self.server.launched.pop(pid, None)
            self.reply(msg.corr_id, False, f"Process {pid} has ended and its output expired.")
            return
        except Exception as e:  # noqa: BLE001 - the process manager's refusal goes to the client
            self.server.attached.pop(pid, None)
            self._launch_error(msg.corr_id, e)
            return
        self.reply(msg.corr_id, True, "Attached")

    async def _terminate(self, msg: P.TerminateProcess) -> None:
        if not self._owns(msg.process_id):
            self.reply(msg.corr_id, False, f"No process {msg.process_id} of yours is running.")
            return
        try:
            await self.server.processes.terminate(msg.process_id, "Signal")
        except KeyError:
            self.server.launched.pop(msg.process_id, None)
            self.reply(msg.corr_id, False, f"Process {msg.process_id} has already ended.")
            return
        except Exception as e:  # noqa: BLE001 - the process manager's refusal goes to the client
            self._launch_error(msg.corr_id, e)
            return
        self.reply(msg.corr_id, True, "Terminated")

    def _transfer_file(self, msg: P.TransferFile) -> None:
        key = (msg.process_id, msg.file_hash)
        up = self._files.get(key)
        if up is None:
            if msg.chunk_index != 0 or not self._owns(msg.process_id):
                log.info("dropping file chunk for %s", msg.process_id)
                return
            up = self._files[key] = _Upload(0, msg.total_chunks)
        if (
            msg.chunk_index != up.next_index
            or msg.total_chunks != up.total_chunks
            or up.size + len(msg.chunk_data) > self.server.max_upload_bytes
        ):
            log.info("file transfer to %s aborted (out of order or too large)", msg.process_id)
            del self._files[key]
            return
        up.parts.append(msg.chunk_data)
        up.size += len(msg.chunk_data)
        up.next_index += 1
        if up.next_index < up.total_chunks:
            return
        del self._files[key]
        data = b"".join(up.parts)
        if msg.file_hash and not digest_matches(data, msg.file_hash):
            log.info("file transfer to %s dropped: hash mismatch", msg.process_id)
            return
        with contextlib.suppress(KeyError):  # it ended meanwhile: nobody to give it to
            self.server.processes.send_file(msg.process_id, msg.file_hash, data)

    # -- queries ---------------------------------------------------------------------------

    def _query(self, msg: P.Query) -> None:
        if msg.subject == "model_status":
            flat: dict[str, Any] = {}
            for model, stats in self.server.stats().items():
                _flatten(f"{model}.", stats, flat)
            self.reply(msg.corr_id, True, json.dumps(flat, default=str))
        elif msg.subject == "program_exists":
            name, version = split_ref(msg.record)
            self.reply(
                msg.corr_id, True, "true" if self.server.programs.exists(name, version) else "false"
            )
        else:
            self.reply(
                msg.corr_id,
                False,
                f"Unknown query subject {msg.subject!r}; supported: model_status, program_exists.",
            )


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict) and not all(isinstance(k, (int, float)) for k in value):
        for k, v in value.items():
            _flatten(f"{prefix}{k}.", v, out)
    else:
        out[prefix[:-1]] = value


def _discard(pid: str, kind: str, value: Any) -> None:
    pass
