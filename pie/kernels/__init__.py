"""Compute kernels of the worker: paged attention (`attention`) and the sampling pipeline
(`sampling`). Each has Triton kernels for CUDA, a plain-torch path for every other device and a
float64 reference for tests; callers use the dispatching entry points only. On CPUs,
`cpu_kernels` (C++, built once per machine) serves decode attention and the model's int8 and
element-wise layers where it is built. See docs/kernels.md.
"""
