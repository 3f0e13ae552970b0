"""Reference point: best-of-n sampling against the reward model (no training).

For each prompt, sample ``n`` responses from the policy, score each with the reward model (read at
the last response token, as the RM is trained), and return the argmax. It spends the reward model
at inference time instead of in a PPO update, so it shows how much of the RM's signal a policy
could extract without moving far from the SFT policy (Stiennon et al. 2020; Gao et al. 2022).
"""

from __future__ import annotations

import math

import torch
from transformers import PreTrainedModel

from components.config import BestOfNConfig
from components.models.decoding import Decoder, decode
from components.models.ensemble import reward_scores
from components.models.generation import Rollout, decode_responses

ROWS_PER_BATCH = 512  # n samples of rows_per_batch // n prompts per generate call


def best_of_n(
    policy: PreTrainedModel,
    reward_model: PreTrainedModel,
    prompts: list[str],
    cfg: BestOfNConfig,
    decoder: Decoder,
    rows_per_batch: int = ROWS_PER_BATCH,
) -> tuple[list[str], list[bool], list[float]]:
    """One response per prompt: the RM's favourite of ``cfg.n`` samples at ``cfg.temperature``.

    ``reward_model`` is any one-output AutoModelForSequenceClassification. ``cfg.missing_eos_penalty`` is
    subtracted from the score of samples that never emitted EOS (as in PPO's rewards). Each generate call
    takes ``rows_per_batch // n`` prompts (at least one): on a CPU, fewer and larger calls are faster.
    Returns (responses, ended, scores): the picked texts, whether each ended with EOS, and its raw RM score
    (without the penalty, as every other policy's RM score is recorded).
    The global torch RNG is left as it was.
    """
    n, tokenizer = cfg.n, decoder.tokenizer
    was_training = reward_model.training
    reward_model = decoder.runtime.to_device(reward_model).eval()

    def pick(rollout: Rollout) -> list[tuple[str, bool, float]]:
        """Of each prompt's n rows (prompt i's are rows [i*n, (i+1)*n)), the one the RM scores highest."""
        raw_scores = reward_scores(reward_model, rollout.batch)  # (prompts * n,)
        penalised = raw_scores - cfg.missing_eos_penalty * (~rollout.ended).float()
        chunk = len(raw_scores) // n
        best = penalised.view(chunk, n).argmax(dim=1) + torch.arange(chunk, device=penalised.device) * n
        texts = decode_responses(tokenizer, rollout.batch)
        return [(texts[i], rollout.ended[i].item(), raw_scores[i].item()) for i in best.tolist()]

    picked = decode(policy, prompts, decoder, max(1, rows_per_batch // n), cfg.temperature, repeat=n, read=pick)
    reward_model.train(was_training)
    return [p[0] for p in picked], [p[1] for p in picked], [p[2] for p in picked]


def best_of_n_kl(n: int) -> float:
    """The analytic KL of best-of-n from the policy it samples, log n - (n - 1) / n (Stiennon et al. 2020, appendix G;
    exact for continuous rewards without ties, an upper bound otherwise)."""
    return math.log(n) - (n - 1) / n


def kl_matched_n(kl: float, n_max: int) -> int:
    """The smallest n whose best-of-n KL reaches ``kl`` (a race at PPO's KL), at most ``n_max``."""
    return next((n for n in range(1, n_max + 1) if best_of_n_kl(n) >= kl), n_max)
