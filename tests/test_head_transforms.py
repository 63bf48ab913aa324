"""Head transforms (issue 26): the engine's logits are the model's own ``forward`` logits, or the model is refused.

Granite divides its logits by ``config.logits_scaling``, Cohere multiplies them by ``config.logit_scale``,
HyperCLOVA X multiplies them by its ``logits_scaling``, Gemma 2 (and Gemma 3 where set) soft-caps them at
``final_logit_softcapping``. Tiny random models of each architecture (SmolLM2's tokenizer, built from
config by ``tests/families.tiny_model``, nothing downloaded) must give, through the engine's head,
``model(ids).logits`` to 1e-5, and the eager and static decode paths must sample the tokens that the model's
own logits give with the same uniforms. A model whose forward changes the logits in a way the engine does not
know is refused.
"""

from __future__ import annotations

import pytest
import torch
from families import tiny_model
from transformers import GraniteForCausalLM, LlamaForCausalLM

from langchain_aisp.engine.config import SamplingParams
from langchain_aisp.engine.decode.eager import Decoder, decode, prefill
from langchain_aisp.engine.decode.static import decode_static
from langchain_aisp.engine.lm import HEAD_FIELDS, HeadTransform, head_for, wrap_model
from langchain_aisp.engine.processors import sample_tokens
from langchain_aisp.errors import ModelLoadError

pytestmark = pytest.mark.usefixtures("single_torch_thread")

# architecture -> (the head transform's own config fields, the scale and softcap the engine must apply)
ARCHITECTURES = {
    "granite": ({"logits_scaling": 8.0}, 1 / 8.0, None),
    "cohere": ({"logit_scale": 0.25}, 0.25, None),
    "hyperclovax": ({"logits_scaling": 3.0}, 3.0, None),
    "gemma2": ({"final_logit_softcapping": 0.5}, 1.0, 0.5),
    "gemma3_text": ({"final_logit_softcapping": 0.5}, 1.0, 0.5),
}
"""Scales and caps are picked so that a missing transform moves the logits far beyond the tolerance on a random
model: its logits are ~1 in size, so the soft-capping needs a cap near 1 to bend them."""


def _tiny(name: str, tokenizer, *, scale_up: float = 1.0):
    model = tiny_model(name, tokenizer, hidden_size=32, num_attention_heads=4, **ARCHITECTURES[name][0])
    with torch.no_grad():  # larger logits, so that the soft-capping bends them
        model.get_output_embeddings().weight.mul_(scale_up)
    return model


@pytest.fixture(scope="module")
def tokenizer(default_lm):
    return default_lm.tokenizer


@pytest.fixture(scope="module")
def wrapped(tokenizer):
    return {name: wrap_model(_tiny(name, tokenizer, scale_up=8.0), tokenizer, name=name) for name in ARCHITECTURES}


@pytest.fixture(scope="module")
def ids(encode):
    return encode("Tell me about the weather in Zurich, please.")


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_the_config_fields_resolve_to_the_transform(wrapped, name):
    _, scale, softcap = ARCHITECTURES[name]
    transform = wrapped[name].head_transform
    assert transform.scale == pytest.approx(scale, rel=1e-12)
    assert transform.softcap == softcap
    assert transform.fields  # says which field it was read from


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_the_engine_head_gives_the_model_forward_logits(wrapped, ids, name):
    lm = wrapped[name]
    batch = torch.tensor([ids])  # (1, L)
    with torch.inference_mode():
        reference = lm.model(input_ids=batch).logits[0]  # (L, vocab)
        z = lm.body(input_ids=batch).last_hidden_state[0]  # (L, d)
        plain = z @ lm.head_weight.T  # (L, vocab): W z, what the head gave before the transforms were applied
        eager = Decoder.build(lm, SamplingParams(max_tokens=4)).head(z, torch.zeros_like(z))  # (L, vocab)
    assert (plain - reference).abs().max() > 1e-2 * reference.abs().max()  # the transform matters here
    torch.testing.assert_close(eager, reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(head_for(lm)(z, torch.zeros_like(z)), reference, rtol=1e-5, atol=1e-5)


def _reference_tokens(lm, ids, uniforms, temperature):
    """Tokens sampled from the model's own ``forward`` logits (full forward per step), the engine's sampler."""
    rows = []
    for row in range(uniforms.shape[0]):
        tokens = list(ids)
        for step in range(uniforms.shape[1]):
            with torch.inference_mode():
                logits = lm.model(input_ids=torch.tensor([tokens])).logits[:, -1].float()  # (1, vocab)
            token = sample_tokens(logits / temperature, uniforms[row : row + 1, step])  # (1,)
            tokens.append(int(token))
        rows.append(tokens[len(ids) :])
    return rows


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_eager_and_static_decoding_sample_from_the_model_logits(wrapped, ids, name):
    lm = wrapped[name]
    rows, max_tokens, temperature = 3, 6, 0.7
    uniforms = torch.rand(rows, max_tokens, generator=torch.Generator().manual_seed(1))  # (B, T)
    expected = _reference_tokens(lm, ids, uniforms, temperature)
    decoder = Decoder.build(lm, SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=1.0, top_k=0))
    prefix = prefill(lm, ids)
    V = torch.zeros(rows, 1, lm.hidden_size)  # (B, tau + 1, d): no control
    row_prompt = torch.zeros(rows, dtype=torch.long)  # (B,)
    eager = decode(decoder, [prefix], row_prompt, V, uniforms)
    static = decode_static(decoder, [prefix], row_prompt, V, uniforms)
    for got in (eager, static):
        for tokens, want in zip(got.token_ids, expected, strict=True):
            assert tokens == want[: len(tokens)]  # shorter only where the row sampled EOS
            assert len(tokens) == max_tokens or tokens[-1] in lm.eos_token_ids


def test_granite_logits_were_eight_times_too_sharp_without_the_transform(wrapped, ids):
    """The issue's case: W z is ``logits_scaling`` (8) times the model's logits."""
    lm = wrapped["granite"]
    batch = torch.tensor([ids])
    with torch.inference_mode():
        reference = lm.model(input_ids=batch).logits[0, -1]  # (vocab,)
        z = lm.body(input_ids=batch).last_hidden_state[0, -1:]  # (1, d)
    plain = (z @ lm.head_weight.T)[0]  # (vocab,)
    torch.testing.assert_close(plain / 8.0, reference, rtol=1e-5, atol=1e-5)


class ScaledLlama(LlamaForCausalLM):
    """A causal LM whose forward scales its logits by a constant no config field names."""

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        out.logits = out.logits * 3.0
        return out


def test_a_model_with_an_unknown_head_transform_is_refused(tokenizer):
    model = ScaledLlama(tiny_model("llama", tokenizer).config)
    with pytest.raises(ModelLoadError) as info:
        wrap_model(model, tokenizer)
    message = str(info.value)
    assert "ScaledLlama (model_type 'llama')" in message
    assert "does not apply" in message and "max relative difference" in message.lower()
    assert "about 3x W z + b" in message
    assert "Config fields that look like head transforms: none" in message


def test_a_refusal_names_the_config_fields_that_look_like_head_transforms(tokenizer):
    """A Granite whose forward also scales (a remote-code variant, say): the field it has is named."""

    class OddGranite(GraniteForCausalLM):
        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            out.logits = out.logits * 5.0
            return out

    config = tiny_model("granite", tokenizer, logits_scaling=2.0).config
    with pytest.raises(ModelLoadError, match=r"looks? like head transforms: \['logits_scaling'\]"):
        wrap_model(OddGranite(config), tokenizer)


def test_the_survey_table_is_data_the_candidates_come_from():
    fields = {f.field: f.ops for f in HEAD_FIELDS}
    assert fields["logits_scaling"] == ("divide", "multiply")  # Granite divides, HyperCLOVA X multiplies
    assert fields["final_logit_softcapping"] == ("softcap",)
    with pytest.raises(ValueError, match=r"head scale must be a finite number > 0, got 0\.0"):
        HeadTransform(scale=0.0)
    with pytest.raises(ValueError, match=r"head softcap must be a finite number > 0 or None, got -1\.0"):
        HeadTransform(softcap=-1.0)


@pytest.mark.parametrize("dtype", [torch.bfloat16])
def test_half_precision_models_pass_the_check(tokenizer, dtype):
    """bf16 rounding of the model's own logits stays within the check's tolerance: no false refusal."""
    model = _tiny("granite", tokenizer, scale_up=8.0).to(dtype)
    lm = wrap_model(model, tokenizer)
    assert lm.head_transform.scale == pytest.approx(1 / 8.0)
