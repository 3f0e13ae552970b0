"""Seed reason 3, measured: "a token-level loss barely moves when one token changes a passage's meaning".

For each held-out prompt, one sampled answer of SFT (seeded; a sample, not the greedy answer, which SFT's loss would
favour for being its mode) and a copy with one token replaced, kept when the judge scores the two differently: a
one-token change of meaning. A fluent edit (the default) replaces the token with one of SFT's own most likely tokens
at that place, so the edit reads as well as the answer and only its meaning moves; a random one with any token, which
mostly breaks the grammar, something a token-level loss sees at once. Beside the judge's difference stand the change in
SFT's own training loss (the mean negative log-likelihood per response token) and in the reward model's score. The
prompt is the unit: one edited pair per prompt. Reason 3 holds when the reward model orders the pairs as the judge
does more often than SFT's loss does (a paired interval over prompts).
"""

from __future__ import annotations

import random
import statistics
from dataclasses import asdict, dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from components.config import ModelConfig, TokenSensitivityConfig
from components.evaluation.intervals import mean_ci, wilson
from components.evaluation.policy_eval import DecodingMode, Scores, sample_responses
from components.models.batching import encode_examples, response_logits, response_logprobs
from components.models.decoding import Decoder
from components.models.ensemble import reward_scores
from components.models.runtime import Runtime

ANSWERS_PER_BATCH = 256  # SFT's answers sampled per generate call


@dataclass
class EditedPair:
    prompt: str
    original: str
    edited: str
    gold: tuple[float, float]  # the judge's score of (original, edited)
    sft_loss: tuple[float, float]  # SFT's mean NLL per response token
    rm: tuple[float, float]  # the reward model's score

    def agrees(self, difference: float) -> float:
        """1 when ``difference`` (edited minus original, higher meaning better) has the judge's sign, else 0."""
        return float((difference > 0) == (self.gold[1] > self.gold[0]) and difference != 0)


def one_token_edits(
    text: str,
    tokenizer: PreTrainedTokenizerBase,
    candidates: list[int] | list[list[int]],
    tries: int,
    rng: random.Random,
) -> list[str]:
    """Up to ``tries`` copies of ``text``, each with one token replaced by another of ``candidates``: one list for every
    place, or a list per token of ``text``."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    per_place = candidates if candidates and isinstance(candidates[0], list) else [candidates] * len(ids)
    edits = []
    places = min(len(ids), len(per_place))
    for _ in range(tries if places else 0):
        position = rng.randrange(places)
        others = [i for i in per_place[position] if i != ids[position]]
        if others:
            replacement = rng.choice(others)
            edits.append(tokenizer.decode([*ids[:position], replacement, *ids[position + 1 :]]))
    return edits


@torch.inference_mode()
def likely_tokens(
    sft: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    texts: list[str],
    top_k: int,
    model_cfg: ModelConfig,
    runtime: Runtime,
) -> list[list[list[int]]]:
    """For each answer, at each of its tokens: SFT's ``top_k`` most likely tokens there other than the one written
    (special tokens never), read off one teacher-forced pass."""
    batch = encode_examples(tokenizer, prompts, texts, model_cfg.max_prompt_tokens, model_cfg.max_response_tokens)
    batch = batch.to(runtime.device)
    logits = response_logits(runtime.to_device(sft).eval(), batch).float()
    logits[..., tokenizer.all_special_ids] = float("-inf")
    ranked = logits.topk(top_k + 1, dim=-1).indices.tolist()  # one more: the written token may be among them
    out = []
    for row, text in zip(ranked, texts):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        out.append([[i for i in ranked_here if i != written][:top_k] for ranked_here, written in zip(row, ids)])
    return out


@torch.inference_mode()
def mean_token_nll(
    policy: PreTrainedModel, tokenizer, prompts: list[str], texts: list[str], model_cfg: ModelConfig, runtime: Runtime
) -> list[float]:
    """SFT's training loss of each (prompt, response): the mean negative log-likelihood of its tokens and EOS."""
    batch = encode_examples(tokenizer, prompts, texts, model_cfg.max_prompt_tokens, model_cfg.max_response_tokens)
    batch = batch.to(runtime.device)
    mask = batch.response_mask.float()
    return (-(response_logprobs(policy, batch) * mask).sum(1) / mask.sum(1).clamp(min=1)).tolist()


@torch.inference_mode()
def edited_pairs(
    sft: PreTrainedModel,
    reward_model: torch.nn.Module,
    prompts: list[str],
    judge: Scores,
    cfg: TokenSensitivityConfig,
    decoder: Decoder,
) -> list[EditedPair]:
    """One edited pair per prompt of the first ``cfg.prompts`` whose answer has an edit the judge scores differently;
    SFT's answers are sampled, and the edits drawn, with the decoder's seed."""
    tokenizer, model_cfg, seed, runtime = decoder.tokenizer, decoder.model_cfg, decoder.seed, decoder.runtime
    prompts = prompts[: cfg.prompts]
    answers = sample_responses(sft, prompts, DecodingMode("sample", False, 1), decoder, ANSWERS_PER_BATCH)
    if cfg.edits == "fluent":
        candidates = likely_tokens(sft, tokenizer, prompts, answers.texts, cfg.top_k, model_cfg, runtime)
    else:
        special = set(tokenizer.all_special_ids)
        candidates = [[i for i in range(len(tokenizer)) if i not in special]] * len(prompts)
    rng = random.Random(f"{seed}/token-sensitivity")
    tried = [
        (p, t, ended, e)
        for p, t, ended, allowed in zip(prompts, answers.texts, answers.ended, candidates)
        for e in one_token_edits(t, tokenizer, allowed, cfg.tries, rng)
    ]
    originals = judge(prompts, answers.texts, answers.ended)
    scored = judge([p for p, _, _, _ in tried], [e for _, _, _, e in tried], [ended for _, _, ended, _ in tried])
    gold_of = dict(zip(prompts, originals))
    kept: dict[str, tuple[str, str, float]] = {}
    for (prompt, original, _, edited), score in zip(tried, scored):
        if prompt not in kept and score != gold_of[prompt]:
            kept[prompt] = (original, edited, score)
    if not kept:
        return []
    rows = list(kept.items())
    both_prompts = [p for p, _ in rows] * 2
    both_texts = [o for _, (o, _, _) in rows] + [e for _, (_, e, _) in rows]
    sft = runtime.to_device(sft).eval()
    losses = mean_token_nll(sft, tokenizer, both_prompts, both_texts, model_cfg, runtime)
    batch = encode_examples(
        tokenizer, both_prompts, both_texts, model_cfg.max_prompt_tokens, model_cfg.max_response_tokens
    ).to(runtime.device)
    rm = reward_scores(runtime.to_device(reward_model).eval(), batch).tolist()
    n = len(rows)
    return [
        EditedPair(prompt, original, edited, (gold_of[prompt], score), (losses[k], losses[n + k]), (rm[k], rm[n + k]))
        for k, (prompt, (original, edited, score)) in enumerate(rows)
    ]


def summarise(pairs: list[EditedPair]) -> dict:
    """Per prompt: does SFT's loss (lower is better) and does the RM order the pair as the judge does; the paired
    difference of the two with a t-interval over prompts; and how far each moved, in units of its own spread over
    the original answers (the judge's likewise)."""
    if len(pairs) < 2:
        return {"pairs": len(pairs)}
    sft_agrees = [p.agrees(p.sft_loss[0] - p.sft_loss[1]) for p in pairs]
    rm_agrees = [p.agrees(p.rm[1] - p.rm[0]) for p in pairs]

    def moved(values: list[tuple[float, float]]) -> float:
        spread = statistics.pstdev([v[0] for v in values]) or 1.0
        return statistics.median(abs(v[1] - v[0]) for v in values) / spread

    return {
        "pairs": len(pairs),
        "sft_loss_agrees": wilson(sum(sft_agrees), len(pairs)).as_dict(),
        "rm_agrees": wilson(sum(rm_agrees), len(pairs)).as_dict(),
        "rm_minus_sft_agreement": mean_ci([r - s for r, s in zip(rm_agrees, sft_agrees)]).as_dict(),
        "median_change_in_spreads": {
            "gold": moved([p.gold for p in pairs]),
            "sft_loss": moved([p.sft_loss for p in pairs]),
            "rm": moved([p.rm for p in pairs]),
        },
        "examples": [asdict(p) for p in pairs[:5]],
    }
