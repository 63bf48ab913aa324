"""Early rejection of partial samples (Speculative Rejection, arXiv 2410.20290) for Best-of-N.

Best-of-N decodes every sample to the end although most of them lose. With ``reject_at = c``
(``AISPParams(method="bon", reject_at=c, keep_fraction=f)``) each iteration instead

1. decodes its n samples per prompt to c tokens (the *partials*; a sample may end earlier),
2. scores the partial responses with the reward,
3. keeps the best ``m = max(1, round(f * n))`` partials of each prompt (ties to the lower row),
4. finishes only those: their cache is the prompt's plus their c tokens (one forward pass per
   prompt over the kept rows), and they continue with the same token-sampling uniforms, so a kept
   sample is the one plain BoN would have drawn with that seed.

The rejected rows are not refilled: the batch shrinks, which is the compute saving. Generated
tokens per prompt and iteration drop from ``n * T`` to ``n * c + m * (T - c)`` (less where samples
end early); ``PromptResult.generated_tokens`` counts the rejected partials too, ``samples`` and
``rewards`` only the m finished responses. A sample that ended before the checkpoint and is kept is
final as it is (its partial score is its reward, scored once). Partials are scored through the same
``score`` as the finished responses, so a reward failure there is handled like any other.

Stop strings that straddle the checkpoint end the text (it is cut at them) but not the decoding.
Grammar constraints, steering (AISP) and plain sampling do not combine with early rejection: the
configuration says so at construction (:class:`~langchain_aisp.engine.config.AISPParams`) and run.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from langchain_aisp.engine.config import AISPParams, SamplingParams
from langchain_aisp.engine.decode.eager import DecodeOutput, Decoder, PromptPrefix, decode
from langchain_aisp.engine.decode.select import DecodeFn
from langchain_aisp.engine.lm import CausalLM

PartialScore = Callable[[list[str]], Sequence[float | None]]
"""``score_partials(texts) -> rewards``: one per row (rows of prompt b are ``b*n .. b*n + n - 1``);
None where that prompt's reward failed (its kept rows are then arbitrary, and the prompt stops)."""


def kept_rows(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """The ``keep`` best-scored rows of each prompt, in ascending row order.

    scores (b, n), NaN or -inf for unscored rows -> indices (b, keep) into n. Ties go to the lower row.
    """
    clean = torch.nan_to_num(scores.double(), nan=-math.inf)  # (b, n)
    order = torch.sort(clean, dim=1, descending=True, stable=True).indices  # (b, n): stable keeps ties in row order
    return order[:, :keep].sort(dim=1).values  # (b, keep)


@torch.inference_mode()
def extend_prefix(lm: CausalLM, prefix: PromptPrefix, token_ids: torch.Tensor) -> list[PromptPrefix]:
    """The prompt's cache continued by each row of ``token_ids`` (m, c): one forward pass, one prefix per row."""
    rows, width = token_ids.shape
    layers = [
        (k.expand(rows, -1, -1, -1).contiguous(), v.expand(rows, -1, -1, -1).contiguous())  # (m, H, L, Dh)
        for k, v in zip(prefix.keys, prefix.values, strict=True)
    ]
    cache = DynamicCache(ddp_cache_data=layers)
    positions = torch.arange(prefix.length, prefix.length + width, device=lm.device)  # (c,)
    out = lm.body(
        input_ids=token_ids.to(lm.device),  # (m, c)
        attention_mask=torch.ones(rows, prefix.length + width, dtype=torch.long, device=lm.device),  # (m, L + c)
        position_ids=positions.expand(rows, -1),  # (m, c)
        use_cache=True,
        **{lm.cache_kwarg: cache},
    )
    grown = getattr(out, lm.cache_kwarg)
    hidden = out.last_hidden_state[:, -1]  # (m, d)
    return [
        PromptPrefix(
            tuple(layer.keys[i : i + 1] for layer in grown.layers),  # (1, H, L + c, Dh) per layer
            tuple(layer.values[i : i + 1] for layer in grown.layers),
            hidden[i],  # (d,)
            prefix.length + width,
        )
        for i in range(rows)
    ]


@dataclass(frozen=True)
class EarlyRejection:
    """Early rejection for one run: the checkpoint, the rows kept and the two decoders, resolved once."""

    lm: CausalLM
    num_samples: int
    """n: samples started per prompt and iteration."""
    reject_at: int
    """c: tokens decoded before the partials are scored."""
    keep: int
    """m: partials finished per prompt and iteration."""
    head: Decoder
    """Decodes the first ``reject_at`` tokens."""
    tail: Decoder
    """Decodes the remaining ``max_tokens - reject_at`` tokens of the kept rows."""
    full: Decoder
    """The run's own decoder: the text of a whole response (cut at stop strings)."""

    @classmethod
    def build(
        cls, lm: CausalLM, params: AISPParams, sampling: SamplingParams, decoder: Decoder
    ) -> EarlyRejection | None:
        """None when ``params.reject_at`` is 0; checks the checkpoint against ``max_tokens``."""
        if params.reject_at == 0:
            return None
        if params.reject_at >= sampling.max_tokens:
            raise ValueError(
                f"reject_at must be in [1, max_tokens - 1] = [1, {sampling.max_tokens - 1}] (the partials are "
                f"scored before the end), got reject_at={params.reject_at} with max_tokens={sampling.max_tokens}"
            )
        n = params.num_samples
        keep = min(n, max(1, round(params.keep_fraction * n)))
        head = Decoder.build(lm, dataclasses.replace(sampling, max_tokens=params.reject_at))
        tail = Decoder.build(lm, dataclasses.replace(sampling, max_tokens=sampling.max_tokens - params.reject_at))
        return cls(lm, n, params.reject_at, keep, head, tail, decoder)

    def refuse_constraints(self) -> None:
        """Raise: a constrained row cannot continue from a partial yet (its matcher would need replaying)."""
        raise ValueError(
            f"early rejection (reject_at={self.reject_at}) does not combine with grammar constraints "
            "(tools, structured output) yet; use reject_at=0 for constrained calls"
        )

    def decode(
        self,
        prefixes: Sequence[PromptPrefix],
        uniforms: torch.Tensor,
        score_partials: PartialScore,
        deadline: float = math.inf,
        decode_fn: DecodeFn | None = None,
    ) -> tuple[DecodeOutput, list[int]]:
        """Decode n partials per prefix, keep the best m, finish them.

        uniforms (b*n, T) are the rows' token-sampling numbers (prompt-major). Returns the m
        finished rows per prompt (b*m rows, prompt-major, in ascending original row order) and the
        tokens of the rejected partials per prompt (b,), which the caller adds to its token count.
        """
        run_decode = decode_fn or decode
        b, n, c = len(prefixes), self.num_samples, self.reject_at
        device = self.lm.device
        zero_control = torch.zeros(b * n, 1, self.lm.hidden_size, device=device)  # (b*n, 1, d): BoN
        row_prompt = torch.arange(b, device=device).repeat_interleave(n)  # (b*n,)
        first = run_decode(self.head, prefixes, row_prompt, zero_control, uniforms[:, :c], None, deadline)
        if first.timed_out:
            return first, [0] * b
        scores = [math.nan if s is None else float(s) for s in score_partials(first.texts)]
        kept = kept_rows(torch.tensor(scores).reshape(b, n), self.keep)  # (b, m)
        rows = (kept + torch.arange(b)[:, None] * n).reshape(-1).tolist()  # (b*m,) into b*n
        going = [r for r in rows if first.finish_reasons[r] != "stop"]  # kept and not ended: continue
        grown: list[PromptPrefix] = []
        for p in range(b):
            mine = [r for r in going if r // n == p]
            if mine:
                partial = torch.tensor([first.token_ids[r] for r in mine], dtype=torch.long)  # (m', c)
                grown.extend(extend_prefix(self.lm, prefixes[p], partial))
        rest = None
        if going:
            count = len(going)
            rest = run_decode(
                self.tail,
                grown,
                torch.arange(count, device=device),  # (m_total,)
                zero_control[:count],  # (m_total, 1, d)
                uniforms[going, c:],  # (m_total, T - c)
                None,
                deadline,
            )
        return self._assemble(first, rest, rows, going), self._rejected_tokens(first, rows, b)

    def _assemble(
        self, first: DecodeOutput, rest: DecodeOutput | None, rows: list[int], going: list[int]
    ) -> DecodeOutput:
        """Join each kept partial with its continuation (if it had one) into the output rows."""
        position = {r: j for j, r in enumerate(going)}
        token_ids, texts, reasons = [], [], []
        for r in rows:
            ids = list(first.token_ids[r])
            reason = first.finish_reasons[r]
            if rest is not None and r in position:
                ids += rest.token_ids[position[r]]
                reason = rest.finish_reasons[position[r]]
            token_ids.append(ids)
            texts.append(self.full.text(ids))
            reasons.append(reason)
        lengths = torch.tensor([len(ids) for ids in token_ids], dtype=torch.long)  # (b*m,)
        return DecodeOutput(token_ids, texts, reasons, lengths, rest is not None and rest.timed_out, first.path)

    def _rejected_tokens(self, first: DecodeOutput, rows: list[int], prompts: int) -> list[int]:
        """Tokens decoded for the rejected partials of each prompt."""
        rejected = torch.ones(prompts * self.num_samples, dtype=torch.bool)  # (b*n,)
        rejected[rows] = False
        per_row = torch.where(rejected, first.lengths, 0).reshape(prompts, self.num_samples)  # (b, n)
        return per_row.sum(dim=1).tolist()
