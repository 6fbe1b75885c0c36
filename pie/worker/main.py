"""The worker process entry: `worker_main(spec, conn)`, spawned by `pie.ipc.client.WorkerClient`.

One process per tensor-parallel rank of one data-parallel device group. Start-up:

1. set the OpenMP environment (threads, wait policy) *before* torch is imported;
2. join the tensor-parallel group (torch.distributed, gloo on CPU, NCCL on CUDA) when
   tp_size > 1;
3. build the driver: load the weights, allocate the KV page pool (progress lines go to `conn`);
4. attach the rings: every rank reads the request ring (it has one reader per rank), rank 0
   alone writes the response ring;
5. send `("ready", WorkerInfo bytes)` on `conn` (or `("error", text)` and exit 1).

Then the loop: read a message, run it (`Runner`), and on rank 0 write its `BatchResult`.
`Shutdown` is answered and ends the loop. The worker also exits when its parent (the
controller) disappears, so a crashed controller never leaves workers or rings behind.
"""

from __future__ import annotations

import gc
import os
import sys
import traceback
from typing import Any

from pie.ipc.spec import WorkerSpec


def _configure_threads(spec: WorkerSpec) -> None:
    threads = max(1, int(spec.option("num_threads")))
    policy = str(spec.option("omp_wait_policy")).upper()
    if policy not in ("PASSIVE", "ACTIVE"):
        raise ValueError(f"omp_wait_policy must be passive or active, got {policy.lower()!r}")
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["OMP_WAIT_POLICY"] = policy
    os.environ["MKL_NUM_THREADS"] = str(threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _join_group(spec: WorkerSpec) -> Any:
    import torch
    import torch.distributed as dist

    backend = "nccl" if spec.device.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(torch.device(spec.device))
    dist.init_process_group(
        backend, init_method=spec.dist_init, rank=spec.tp_rank, world_size=spec.tp_size
    )
    return dist.group.WORLD


def worker_main(spec: WorkerSpec, conn: Any, doorbell: Any = None) -> None:
    """Run one worker rank until Shutdown, ring closure, or the controller's death.

    `conn` carries start-up progress and the ready/error message; `doorbell` (rank 0 only) is
    the pipe end on which one byte announces each result written to the response ring.
    """
    parent = os.getppid()
    try:
        _configure_threads(spec)  # before anything imports torch
        from pie.ipc.channel import Channel
        from pie.ipc.messages import Request, Response
        from pie.ipc.ring import Ring
        from pie.worker.drivers import make_driver
        from pie.worker.runner import Runner

        def progress(text: str) -> None:
            if spec.tp_rank == 0:
                conn.send(("progress", text))

        group = _join_group(spec) if spec.tp_size > 1 else None
        driver = make_driver(spec, progress, group)
        spin = float(spec.option("spin_us"))
        requests = Channel(
            Ring.attach(spec.request_ring, reader_index=spec.tp_rank, spin_us=spin), Request
        )
        responses = (
            Channel(Ring.attach(spec.response_ring, writer=True, spin_us=spin), Response)
            if spec.tp_rank == 0
            else None
        )
        import msgspec

        conn.send(("ready", msgspec.msgpack.encode(driver.info())))
    except BaseException as exc:  # noqa: BLE001 - reported to the controller, then exit 1
        # user mistakes (bad model path, bad option) are one sentence; anything else keeps
        # its traceback for the log
        plain = type(exc).__name__ in ("ModelLoadError", "ValueError", "BatchError")
        text = str(exc) if plain else f"{type(exc).__name__}: {exc}"
        detail = "" if plain else traceback.format_exc()
        try:
            conn.send(("error", text, detail))
        except Exception:  # noqa: BLE001, S110 - best-effort cleanup
            pass
        sys.exit(1)
    bell = None
    if doorbell is not None:
        bell = doorbell.fileno()
        os.set_blocking(bell, False)
    runner = Runner(driver)
    # the start-up heap (torch, the model) lives as long as the worker: keep the cyclic
    # collector from walking it again, a full pass over it stalls a step for ~100 ms
    gc.collect()
    gc.freeze()
    _serve(requests, responses, runner, parent, bell)
    driver.close()
    requests.close()
    if responses is not None:
        responses.close()
    conn.close()


def _serve(requests, responses, runner, parent: int, bell: int | None) -> None:
    from pie.ipc.messages import BatchResult, Shutdown
    from pie.ipc.ring import MessageTooLarge, RingClosed

    def alive() -> bool:
        return os.getppid() == parent

    def send(result: BatchResult) -> None:
        try:
            responses.send(result, alive=alive)
        except MessageTooLarge as exc:
            responses.send(BatchResult(batch_id=result.batch_id, error=str(exc)), alive=alive)
        if bell is not None:
            try:
                os.write(bell, b"\x01")
            except BlockingIOError:
                pass  # the pipe is full: the controller has unread rings already

    while True:
        try:
            msg = requests.recv(alive=alive)
        except RingClosed:
            return
        except Exception as exc:  # noqa: BLE001 - undecodable bytes: answer, do not hang
            msg, result = None, BatchResult(batch_id=-1, error=f"undecodable message: {exc}")
        else:
            result = None
        try:
            if isinstance(msg, Shutdown):
                if responses is not None:
                    send(BatchResult(batch_id=msg.batch_id))
                return
            if result is None:
                result = runner.handle(msg)
            if responses is not None:
                send(result)
        except (RingClosed, BrokenPipeError):
            return  # the controller is gone
