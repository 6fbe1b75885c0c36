"""The controller <-> worker boundary: shared-memory rings, typed channels, wire messages.

* `ring.Ring`: fixed-size slots in shared memory, one writer and N readers, spin-then-park.
* `channel.Channel`: msgpack framing of `messages` over a ring, with reusable codecs.
* `messages`: `BatchDescriptor`, `BatchResult`, control ops, `WorkerInfo`.
* `spec.WorkerSpec`: what a worker process is started with; `worker_specs` and `device_groups`
  split a configured model into data-parallel groups.
* `client.WorkerClient`: the controller's async handle on one worker (spawn, submit, close).

Pure Python (numpy, msgspec): nothing here imports torch.
"""
