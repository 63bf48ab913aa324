"""Text quality beside reward, measured with the base model itself (issue 27).

* :func:`answer_logliks`: the base model's mean log-likelihood per generated token of each answer given its
  prompt, at temperature 1 (the model's own distribution), EOS included when the answer ended with it. A
  steered proposal that buys reward with unlikely text lowers it.
* :func:`shift_kl`: along each answer's own contexts (teacher forcing), the per-token KL divergence of a
  proposal shifted by a pre-logit vector from the model's proposal at a temperature: what a learned shift
  really costs, to set beside the estimate a memory steers by.

One forward pass per answer over prompt + answer; no cache, no sampling. Plain torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from langchain_aisp.engine.lm import CausalLM, head_for


def _prelogits(lm: CausalLM, prompt_ids: Sequence[int], answer_ids: Sequence[int]) -> torch.Tensor:
    """The pre-logits that predict each answer token: (len(answer_ids), d)."""
    ids = torch.tensor([list(prompt_ids) + list(answer_ids)], device=lm.device)  # (1, L)
    hidden = lm.body(input_ids=ids).last_hidden_state[0]  # (L, d)
    start = len(prompt_ids) - 1
    return hidden[start : start + len(answer_ids)]  # (A, d)


def _logits(lm: CausalLM, z: torch.Tensor) -> torch.Tensor:
    return head_for(lm)(z, torch.zeros_like(z))  # (A, vocab) fp32, the model's own head transform applied


@torch.inference_mode()
def answer_logliks(lm: CausalLM, prompt_ids: Sequence[Sequence[int]], answers: Sequence[Sequence[int]]) -> list[float]:
    """Per answer, the mean of ``log p(y_t | prompt, y_<t)`` over its tokens under the base model (T = 1);
    NaN for an empty answer. ``prompt_ids[i]`` is the templated prompt of ``answers[i]``."""
    if len(prompt_ids) != len(answers):
        raise ValueError(f"one prompt per answer: got {len(prompt_ids)} prompts and {len(answers)} answers")
    values: list[float] = []
    for prompt, answer in zip(prompt_ids, answers, strict=True):
        if not answer:
            values.append(float("nan"))
            continue
        logp = torch.log_softmax(_logits(lm, _prelogits(lm, prompt, answer)), dim=-1)  # (A, vocab)
        target = torch.tensor(list(answer), device=logp.device)  # (A,)
        values.append(float(logp.gather(1, target[:, None]).mean()))
    return values


@torch.inference_mode()
def shift_kl(
    lm: CausalLM,
    prompt_ids: Sequence[Sequence[int]],
    answers: Sequence[Sequence[int]],
    shift: torch.Tensor,
    temperature: float = 1.0,
) -> list[float]:
    """Per answer, the mean over its positions of ``KL(q_t || p_t)``: ``p_t = softmax(W z_t / T)`` the model's
    proposal and ``q_t = softmax(W (z_t + shift) / T)`` the shifted one, z_t the pre-logits of the answer's own
    contexts. ``shift`` (d,) is a pre-logit vector; NaN for an empty answer."""
    values: list[float] = []
    for prompt, answer in zip(prompt_ids, answers, strict=True):
        if not answer:
            values.append(float("nan"))
            continue
        z = _prelogits(lm, prompt, answer)  # (A, d)
        log_p = torch.log_softmax(_logits(lm, z) / temperature, dim=-1)  # (A, vocab)
        log_q = torch.log_softmax(_logits(lm, z + shift.to(z)) / temperature, dim=-1)  # (A, vocab)
        values.append(float((log_q.exp() * (log_q - log_p)).sum(dim=-1).mean()))
    return values
