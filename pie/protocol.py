"""The client <-> server wire protocol: every WebSocket message as a msgspec Struct.

Frames are binary WebSocket messages, each one MessagePack map tagged by its `"type"` field,
compatible with the original Pie clients. Requests carry a client-chosen `corr_id` and are
answered by exactly one `Response` with the same `corr_id`; `signal_process` and
`transfer_file` are fire-and-forget. Process output arrives unsolicited as `ProcessEvent`
(stdout, stderr, message, return, error) and `FileChunk` messages.

Text frames holding the same maps as JSON are accepted too (bytes fields are then base64);
the server answers a text frame with a text frame.

Requests (client -> server) and what `Response.result` holds when `ok`:

    auth_identify {username}           base64 challenge, or "Authenticated (...)" when auth is off
    auth_prove {signature}             "Authenticated" (signature: base64 over the challenge)
    auth_by_token {token}              "Authenticated" (the engine's internal token)
    check_program {name, version?, wasm_hash?}          "true" | "false"
    add_program {program_hash, manifest, chunk_index, total_chunks, chunk_data,
                 force_overwrite}      one response, after the last chunk
    launch_process {inferlet, input, capture_outputs, token_budget?}   process id
    launch_processes {inferlet, inputs, capture_outputs, token_budgets?}  JSON list of ids
    run_processes {inferlet, inputs, token_budgets?}    JSON list of return values
    attach_process {process_id}        "Attached" (buffered events follow)
    terminate_process {process_id}     "Terminated" (the process ends with error "Signal")
    list_processes {}                  JSON list of {id, username, program, input, elapsed_secs}
    query {subject: "model_status"}    flat JSON of per-model statistics, "<model>.<key>"
    ping {}                            "Pong"
    signal_process {process_id, message}            no response
    transfer_file {process_id, file_hash, chunk_index, total_chunks, chunk_data}   no response

`pie/server.py` decodes with `decode_client` and encodes with `encode_server`; `pie/client.py`
does the reverse with `encode_client` / `decode_server`. Nothing here does I/O.
"""

from __future__ import annotations

import msgspec

CHUNK_SIZE = 256 * 1024  # bytes per upload / download chunk, as in the original clients

EVENT_KINDS = ("stdout", "stderr", "message", "return", "error")
TERMINAL_EVENTS = ("return", "error")


class _Msg(msgspec.Struct, tag_field="type", omit_defaults=True, gc=False):
    pass


# --- client -> server -------------------------------------------------------------------------


class AuthIdentify(_Msg, tag="auth_identify"):
    corr_id: int
    username: str


class AuthProve(_Msg, tag="auth_prove"):
    corr_id: int
    signature: str  # base64 of the signature over the challenge bytes


class AuthByToken(_Msg, tag="auth_by_token"):
    corr_id: int
    token: str


class CheckProgram(_Msg, tag="check_program"):
    corr_id: int
    name: str  # "name", "name@version", or empty when only a hash is asked about
    version: str = ""
    wasm_hash: str | None = None  # digest of the payload; alone, it asks "is this upload known?"
    manifest_hash: str | None = None


class Query(_Msg, tag="query"):
    corr_id: int
    subject: str
    record: str = ""


class AddProgram(_Msg, tag="add_program"):
    corr_id: int
    program_hash: str  # blake3 (or sha256) hex of the whole payload
    manifest: str  # Pie.toml text
    chunk_index: int
    total_chunks: int
    chunk_data: bytes
    force_overwrite: bool = False


class LaunchProcess(_Msg, tag="launch_process"):
    corr_id: int
    inferlet: str  # "name" (latest version) or "name@version"
    input: str = "{}"  # JSON text
    capture_outputs: bool = True
    token_budget: int | None = None


class LaunchProcesses(_Msg, tag="launch_processes"):
    corr_id: int
    inferlet: str
    inputs: list[str] = []
    capture_outputs: bool = True
    token_budgets: list[int | None] | None = None


class RunProcesses(_Msg, tag="run_processes"):
    corr_id: int
    inferlet: str
    inputs: list[str] = []
    token_budgets: list[int | None] | None = None


class AttachProcess(_Msg, tag="attach_process"):
    corr_id: int
    process_id: str


class TerminateProcess(_Msg, tag="terminate_process"):
    corr_id: int
    process_id: str


class SignalProcess(_Msg, tag="signal_process"):
    process_id: str
    message: str


class TransferFile(_Msg, tag="transfer_file"):
    process_id: str
    file_hash: str
    chunk_index: int
    total_chunks: int
    chunk_data: bytes


class ListProcesses(_Msg, tag="list_processes"):
    corr_id: int


class Ping(_Msg, tag="ping"):
    corr_id: int


class LaunchDaemon(_Msg, tag="launch_daemon"):
    corr_id: int
    port: int = 0
    inferlet: str = ""
    input: str = "{}"


class RegisterMcpServer(_Msg, tag="register_mcp_server"):
    corr_id: int
    name: str = ""


ClientMessage = (
    AuthIdentify
    | AuthProve
    | AuthByToken
    | CheckProgram
    | Query
    | AddProgram
    | LaunchProcess
    | LaunchProcesses
    | RunProcesses
    | AttachProcess
    | TerminateProcess
    | SignalProcess
    | TransferFile
    | ListProcesses
    | Ping
    | LaunchDaemon
    | RegisterMcpServer
)

AUTH_MESSAGES = (AuthIdentify, AuthProve, AuthByToken)


# --- server -> client -------------------------------------------------------------------------


class Response(_Msg, tag="response"):
    corr_id: int
    ok: bool
    result: str


class ProcessEvent(_Msg, tag="process_event"):
    process_id: str
    event: str  # one of EVENT_KINDS
    value: str


class FileChunk(_Msg, tag="file"):
    process_id: str
    file_hash: str
    chunk_index: int
    total_chunks: int
    chunk_data: bytes


ServerMessage = Response | ProcessEvent | FileChunk


# --- codecs -----------------------------------------------------------------------------------

_client_mp = msgspec.msgpack.Decoder(ClientMessage)
_client_js = msgspec.json.Decoder(ClientMessage)
_server_mp = msgspec.msgpack.Decoder(ServerMessage)
_mp_enc = msgspec.msgpack.Encoder()
_js_enc = msgspec.json.Encoder()


class ProtocolError(ValueError):
    """A frame that is not a valid message; `corr_id` is set when the frame named one."""

    def __init__(self, message: str, corr_id: int | None = None):
        super().__init__(message)
        self.corr_id = corr_id


def _salvage_corr_id(frame: bytes | str) -> int | None:
    """Best-effort corr_id of a frame that failed validation, so the error can be answered."""
    try:
        raw = (
            msgspec.json.decode(frame) if isinstance(frame, str) else msgspec.msgpack.decode(frame)
        )
    except Exception:  # noqa: BLE001 - any undecodable frame simply has no corr_id
        return None
    if isinstance(raw, dict):
        cid = raw.get("corr_id")
        if isinstance(cid, int) and not isinstance(cid, bool):
            return cid
    return None


def decode_client(frame: bytes | str) -> ClientMessage:
    """Decode one client frame (msgpack bytes, or JSON text); raises `ProtocolError`."""
    try:
        if isinstance(frame, str):
            return _client_js.decode(frame)
        return _client_mp.decode(frame)
    except msgspec.ValidationError as e:
        raise ProtocolError(f"Malformed message: {e}.", _salvage_corr_id(frame)) from None
    except msgspec.DecodeError as e:
        kind = "JSON" if isinstance(frame, str) else "MessagePack"
        raise ProtocolError(f"Frame is not a {kind} map: {e}.") from None


def encode_server(msg: ServerMessage, text: bool = False) -> bytes | str:
    if text:
        return _js_enc.encode(msg).decode()
    return _mp_enc.encode(msg)


def encode_client(msg: ClientMessage) -> bytes:
    return _mp_enc.encode(msg)


def decode_server(frame: bytes) -> ServerMessage:
    return _server_mp.decode(frame)


def split_chunks(data: bytes, chunk_size: int = CHUNK_SIZE) -> list[bytes]:
    """Split a payload into upload chunks; an empty payload is one empty chunk."""
    if not data:
        return [b""]
    return [data[i : i + chunk_size] for i in range(0, len(data), chunk_size)]
