"""The worker process: one per data-parallel device group (one per rank with tensor parallelism).

`main.worker_main` is the process entry, `runner.Runner` turns ring messages into results,
`batch.ForwardBatch` validates and decodes descriptors, `drivers/` holds the backends
(`portable`, `cuda_native`, `dummy`) and `sampling` is the door to the sampling pipeline.
Importing this package does not import torch; the controller side is `pie.ipc.client`.
"""
