"""Speculative decoding: each decode step verifies `tokens` drafted tokens per sequence and keeps the
ones the target model agrees with, so one step can emit several tokens.

- `mtp`: the model's own multi-token-prediction module drafts (DeepSeek-V3/R1: one transformer block
  and the shared head per drafted token; the model needs MTP modules, `mtp_depth`).
- `eagle`: a one-layer draft head on the target's hidden states (EAGLE-1/2/3): one decoder layer of the
  target's width and the target's LM head per drafted token.
- `draft`: a smaller model of the same vocabulary drafts, one decode step of it per drafted token.

A step's cost: the target runs `tokens + 1` query tokens per decoding sequence (attention over its
cache, the GEMMs at that many tokens, the LM head on every position), after `tokens` sequential
passes of the drafter. What it emits: the bonus token plus the drafted tokens accepted in a row, each
accepted with probability `acceptance` given the previous one was (the usual i.i.d. model of
Leviathan et al., 2023), drawn per sequence and step from a seeded generator, so the same run gives
the same tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from chipsim.models.zoo import ModelConfig

METHODS = ("mtp", "eagle", "draft")
MAX_TOKENS = 16  # drafted tokens per step: engines use 1-8 (EAGLE-3's trees up to ~8 deep)
# DeepSeek-V3's MTP module: "the acceptance rate of the second token prediction ranges between 85%
# and 90%" (DeepSeek-V3 Technical Report, arXiv:2412.19437, section 5.4.3)
MTP_ACCEPTANCE = 0.85


@dataclass(frozen=True)
class Speculation:
    method: str  # mtp, eagle or draft
    tokens: int  # drafted tokens verified per step and sequence
    acceptance: float  # probability a drafted token is accepted, given the one before it was
    draft_model: ModelConfig | None = None  # the drafter of method `draft`

    @property
    def expected_tokens(self) -> float:
        """Tokens a step emits per sequence on average: 1 + a + a^2 + ... + a^tokens."""
        a = self.acceptance
        return float(sum(a ** i for i in range(self.tokens + 1)))

    def label(self) -> str:
        drafter = f" ({self.draft_model.model_id})" if self.draft_model is not None else ""
        return f"{self.method}{drafter}, {self.tokens} drafted tokens, acceptance {self.acceptance:g}"


def accepted(rng: np.random.Generator, sequences: int, spec: Speculation) -> np.ndarray:
    """Tokens each of `sequences` emits this step: 1 + the drafted tokens accepted in a row."""
    ok = rng.random((sequences, spec.tokens)) < spec.acceptance
    run = np.where(ok.all(axis=1), spec.tokens, ok.argmin(axis=1))
    return 1 + run
