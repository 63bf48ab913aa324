"""The engine: plain torch, no LangChain, HTTP, Ray or grammar-library import (``tests/test_architecture.py``).

- :mod:`~langchain_aisp.engine.config`: ``AISPParams`` / ``SamplingParams``, validated at construction.
- :mod:`~langchain_aisp.engine.lm`: a Hugging Face causal LM as a :class:`CausalLM` (body, LM head, tokenizer).
- :mod:`~langchain_aisp.engine.processors`: per-step logit transforms (temperature, top-k, top-p) and sampling.
- :mod:`~langchain_aisp.engine.constraints`: the per-row constraint protocol (mask, then advance) grammars plug into.
- :mod:`~langchain_aisp.engine.decode`: the decode paths (eager, static/CUDA-graph) and the choice between them.
- :mod:`~langchain_aisp.engine.importance`: the importance-sampling math (weights, ESS, lambda, the mean update).
- :mod:`~langchain_aisp.engine.aisp`: the AISP / Best-of-N loop, ``run``.
- :mod:`~langchain_aisp.engine.memory`: the control memory (a self-checking proposal learned across calls).
- :mod:`~langchain_aisp.engine.default_model`: the embedded SmolLM2-135M-Instruct.
- :mod:`~langchain_aisp.engine.threads`: the CPU thread-count policy.

Nothing is imported here: each module loads on first use.
"""
