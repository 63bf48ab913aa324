"""Decode paths: :mod:`.eager` (a plain loop over a dynamic KV cache, every device) and :mod:`.static`
(a preallocated KV cache with, on CUDA, a captured CUDA graph or a compiled step per bucket)."""
