"""Reference point: best-of-n sampling against the reward model (no training).

For each prompt, sample ``n`` responses from the policy, score each with the reward model (read at
the last response token, as the RM is trained), and return the argmax. It spends the reward model
at inference time instead of in a PPO update, so it shows how much of the RM's signal a policy
could extract without moving far from the SFT policy (Stiennon et al. 2020; Gao et al. 2022).
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from components.config import ModelConfig
from components.models.batching import encode_prompts
from components.models.ensemble import reward_scores
from components.models.generation import decode_responses, generate


@torch.no_grad()
def best_of_n(
    policy: PreTrainedModel,
    reward_model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    n: int,
    model_cfg: ModelConfig,
    temperature: float = 1.0,
    seed: int = 0,
    missing_eos_penalty: float = 0.0,
    rows_per_batch: int = 512,
) -> tuple[list[str], list[bool], list[float]]:
    """One response per prompt: the RM's favourite of ``n`` samples.

    ``reward_model`` is any one-output AutoModelForSequenceClassification. ``missing_eos_penalty`` is
    subtracted from the score of samples that never emitted EOS (as in PPO's rewards). Each generate call
    takes ``rows_per_batch // n`` prompts (at least one): on a CPU, fewer and larger calls are faster.
    Returns (responses, ended, scores): the picked texts, whether each ended with EOS, and its raw RM score
    (without the penalty, as every other policy's RM score is recorded).
    The global torch RNG is left as it was.
    """
    was_training = reward_model.training
    reward_model.eval()
    responses: list[str] = []
    ended: list[bool] = []
    scores: list[float] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        prompts_per_batch = max(1, rows_per_batch // n)
        for start in range(0, len(prompts), prompts_per_batch):
            chunk = prompts[start : start + prompts_per_batch]
            repeated = [p for p in chunk for _ in range(n)]  # prompt i's samples are rows [i*n, (i+1)*n)
            prompt_ids, prompt_mask = encode_prompts(tokenizer, repeated, model_cfg.max_prompt_tokens)
            rollout = generate(
                policy,
                prompt_ids,
                prompt_mask,
                model_cfg.max_response_tokens,
                tokenizer.eos_token_id,
                tokenizer.pad_token_id,
                temperature=temperature,
            )
            raw_scores = reward_scores(reward_model, rollout.batch)  # (len(chunk) * n,)
            penalised = raw_scores - missing_eos_penalty * (~rollout.ended).float()
            best = penalised.view(len(chunk), n).argmax(dim=1) + torch.arange(len(chunk)) * n  # (len(chunk),)
            texts = decode_responses(tokenizer, rollout.batch)
            responses += [texts[i] for i in best.tolist()]
            ended += rollout.ended[best].tolist()
            scores += raw_scores[best].tolist()
    reward_model.train(was_training)
    return responses, ended, scores
