"""Shared fixtures: the embedded default model (loaded once) and a tiny random Llama.

The tiny model reuses the default model's tokenizer (so chat templates, EOS and
stop strings are real) with a 2-layer, 32-wide random body: fast enough for unit
tests of the decoding and the loop. Nothing here touches the network.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def default_lm():
    from langchain_aisp.engine.lm import load_causal_lm

    return load_causal_lm(None, device="cpu")


@pytest.fixture(scope="session")
def tiny_lm(default_lm):
    from transformers import LlamaConfig, LlamaForCausalLM

    from langchain_aisp.engine.lm import wrap_model

    tokenizer = default_lm.tokenizer
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    torch.random.set_rng_state(generator_state)
    return wrap_model(model, tokenizer, name="tiny-llama")


@pytest.fixture(scope="session")
def encode(default_lm):
    """Render a user question with the chat template and return its token ids."""
    tokenizer = default_lm.tokenizer

    def _encode(question: str) -> list[int]:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
        )
        return list(tokenizer(text, add_special_tokens=False).input_ids)

    return _encode


@pytest.fixture(scope="module")
def single_torch_thread():
    """One torch thread for a module: on a shared 2-core machine OpenMP's spinning threads make decoding
    many times slower. Modules opt in with ``pytestmark = pytest.mark.usefixtures("single_torch_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
