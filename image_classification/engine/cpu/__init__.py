"""Everything CPU-specific: fused kernels, their build and cache, when they serve, and the
process settings of a CPU run.

  settings  the environment to set before `import paddle` (`set_process_environment`) and the
            allocator / thread / flag settings applied when a CPU run starts (`configure`)
  dispatch  whether a kernel serves an op now (float32, CPU, dygraph, loaded); the only door
            from the engine's layers to the kernels
  kernels   the kernels' Python entry points, and whether they are loaded
  build     compile csrc/fused_cpu_ops.cc into a cache keyed by source, flags, Paddle, Python
            and CPU instruction set; verify the cached binary before loading it

Importing this package, or `settings`, changes nothing and imports nothing, not even Paddle
(entry points import `settings` before Paddle); `kernels` and `build` are imported only once
a float32 CPU op in dygraph asks for a kernel.
"""
