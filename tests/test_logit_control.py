"""The token-bias control (issue 17): AISP's importance-sampling update on a logit bias over the used tokens."""

from __future__ import annotations

import pytest
import torch

from langchain_aisp.engine.aisp import control_shape, run
from langchain_aisp.engine.config import AISPParams, SamplingParams
from langchain_aisp.engine.logit_control import control_head, grow_support, perturb

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def test_pieces_perturb_only_the_support_and_add_the_bias_to_the_logits(tiny_lm):
    vocab = tiny_lm.head_weight.shape[0]
    support = grow_support(torch.zeros(vocab, dtype=torch.bool), [[5, 9], [9, 2], []])
    assert support.nonzero().squeeze(-1).tolist() == [2, 5, 9]
    U = torch.zeros(1, vocab)
    U[0, 7] = 1.5
    eps = torch.randn(3, 1, vocab, generator=torch.Generator().manual_seed(0))
    V = perturb(U, eps, support, 2.0)
    assert V.shape == (3, 1, vocab)
    changed = (V[:, 0] != U).any(dim=0).nonzero().squeeze(-1).tolist()
    assert changed == [2, 5, 9] and torch.equal(V[:, 0, 7], torch.full((3,), 1.5))
    z = torch.randn(3, tiny_lm.hidden_size)
    logits = control_head(tiny_lm, "token-bias")(z, V[:, 0])
    assert torch.allclose(logits, z @ tiny_lm.head_weight.T + V[:, 0], atol=1e-5)


def test_token_bias_run_learns_a_bias_on_the_tokens_it_sampled(tiny_lm, encode):
    params = AISPParams(method="aisp", num_samples=4, num_iterations=3, sigma=2.0, control="token-bias")
    sampling = SamplingParams(max_tokens=6)
    vocab = tiny_lm.head_weight.shape[0]
    assert control_shape(tiny_lm, params, sampling) == (1, vocab)

    def score(indices, texts):
        return [float(len(t)) for t in texts]

    results = run(tiny_lm, [encode("Hi"), encode("Why?")], score, params, sampling, seed=3)
    again = run(tiny_lm, [encode("Hi"), encode("Why?")], score, params, sampling, seed=3)
    for result, repeat in zip(results, again, strict=True):
        assert result.texts == repeat.texts  # same seed, same answer
        assert result.U is not None and result.U.shape == (1, vocab)
        used_before_last = {t for it in result.sample_token_ids[:-1] for ids in it for t in ids}
        biased = set(result.U[0].nonzero().squeeze(-1).tolist())
        assert biased and biased <= used_before_last  # only tokens earlier samples used get a bias
        assert len(result.rewards) == 3 and result.samples == 12
    alone = run(tiny_lm, [encode("Why?")], score, params, sampling, seed=3)[0]
    assert alone.texts == results[1].texts  # batch-independent


def test_token_bias_rejects_token_step():
    with pytest.raises(
        ValueError, match=r"token_step must be 0 with control='token-bias' \(it drifts a pre-logit control\), got 0.5"
    ):
        AISPParams(method="aisp", control="token-bias", token_step=0.5)
    with pytest.raises(
        ValueError, match=r"control must be one of \['position', 'shared', 'token-bias', 'temperature'\]"
    ):
        AISPParams(method="aisp", control="bias")


def test_a_control_memory_refuses_token_bias(tiny_lm, encode):
    from langchain_aisp.engine.memory import ControlMemory, run_with_memory

    params = AISPParams(method="aisp", num_samples=2, num_iterations=1, sigma=1.0, control="token-bias")
    with pytest.raises(ValueError, match=r"control memory shifts the pre-logits.*got control='token-bias'"):
        run_with_memory(ControlMemory(), tiny_lm, [encode("Hi")], lambda i, t: [0.0] * len(t), params,
                        SamplingParams(max_tokens=2), reward="r")  # fmt: skip


def test_same_seed_same_uniforms_whatever_the_control(tiny_lm, encode):
    """The control noise has its own generator: Best-of-N and AISP sample with the same uniforms."""
    sampling = SamplingParams(max_tokens=6)
    prompts = [encode("Hi")]

    def score(indices, texts):
        return [float(len(t)) for t in texts]

    def texts(**kwargs):
        params = AISPParams(num_samples=4, num_iterations=2, **kwargs)
        return run(tiny_lm, prompts, score, params, sampling, seed=11)[0].texts

    bon = texts(method="bon")
    assert texts(method="bon", control="shared") == bon  # BoN ignores the control's shape
    assert texts(method="aisp", control="token-bias", sigma=2.0)[0] == bon[0]  # empty support: BoN's samples
    assert texts(method="aisp", sigma=1e-6) == bon  # a negligible control changes nothing (Gumbel-max coupling)


def test_temperature_control_adapts_one_number_per_prompt(tiny_lm, encode):
    z = torch.randn(2, tiny_lm.hidden_size)
    v = torch.tensor([[0.0], [0.5]])
    logits = control_head(tiny_lm, "temperature")(z, v)
    plain = z @ tiny_lm.head_weight.T
    assert torch.allclose(logits[0], plain[0], atol=1e-5) and torch.allclose(
        logits[1], plain[1] / 0.5**0 / 1.6487212707, atol=1e-4
    )
    params = AISPParams(method="aisp", num_samples=16, num_iterations=3, sigma=0.3, control="temperature")
    sampling = SamplingParams(max_tokens=4)
    assert control_shape(tiny_lm, params, sampling) == (1, 1)
    result = run(tiny_lm, [encode("Hi")], lambda i, t: [float(len(x)) for x in t], params, sampling, seed=2)[0]
    # U moves as far as the evidence that its one number matters (importance.signal_share)
    assert result.U is not None and result.U.shape == (1, 1) and float(result.U.abs()) > 0
    assert result.signal_shares[-1] > 0
    with pytest.raises(ValueError, match=r"logit control must be one of \['token-bias', 'temperature'\], got 'x'"):
        control_head(tiny_lm, "x")


def test_logit_controls_refuse_the_static_path(tiny_lm, encode):
    params = AISPParams(method="aisp", num_samples=2, num_iterations=1, sigma=1.0, control="token-bias")
    with pytest.raises(ValueError, match=r"control='token-bias' decodes on the eager path.*got decoding='static'"):
        run(tiny_lm, [encode("Hi")], lambda i, t: [0.0] * len(t), params, SamplingParams(max_tokens=2),
            decoding="static")  # fmt: skip
