"""Ranking a prompt's sampled responses into preference pairs (InstructGPT's K-choose-2): the labeller types and
the rows they make. Plain Python, no torch: the embedded task's generator builds its preference file with it.

A response that hit the length limit without emitting EOS is kept and marked: the ranker is told (``ended``),
because the gold judge penalises responses that never end, and the row records it (``chosen_ended`` /
``rejected_ended``) so the reward model's accuracy can be checked against the gold judge later.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

Ranker = Callable[[str, list[str], list[bool]], list[int]]  # (prompt, responses, ended) -> indices, best first
# (prompts, each prompt's K sampled (response, ended)) -> preference rows
Labeller = Callable[[Sequence[str], Sequence[Sequence[tuple[str, bool]]]], list[dict]]
SOURCE = "sft_samples"  # the ``source`` of the rows ranked from policy samples


def ranked_pairs(prompt: str, samples: Sequence[tuple[str, bool]], rank: Ranker) -> list[tuple[dict, bool, bool]]:
    """Every pair of one prompt's responses in the order ``rank`` gives them (InstructGPT's K-choose-2), each with
    the two responses' ``ended`` flags.

    Identical responses are collapsed first (the first copy and its flag kept), so chosen never equals rejected;
    ``chosen_position`` records whether the chosen response was shown first (0) or second (1).
    """
    ended: dict[str, bool] = {}
    for text, flag in samples:
        ended.setdefault(text, flag)
    responses = list(ended)
    if len(responses) < 2:
        return []
    order = rank(prompt, responses, [ended[r] for r in responses])
    place = {index: position for position, index in enumerate(order)}
    pairs = []
    for i in range(len(responses)):
        for j in range(i + 1, len(responses)):
            first_wins = place[i] < place[j]
            chosen, rejected = (responses[i], responses[j]) if first_wins else (responses[j], responses[i])
            row = {"prompt": prompt, "chosen": chosen, "rejected": rejected, "chosen_position": 0 if first_wins else 1}
            pairs.append((row, ended[chosen], ended[rejected]))
    return pairs


def rank_sampled(
    prompts: Sequence[str],
    groups: Sequence[Sequence[tuple[str, bool]]],
    rank: Ranker,
    min_words: int = 1,
    prompt_ids: Mapping[str, str] | None = None,
) -> list[dict]:
    """Every ranked pair of each prompt's sampled responses (``ranked_pairs``), as preference rows.

    Responses with fewer than ``min_words`` whitespace-separated words (the preferences contract refuses them)
    are dropped before ranking; a ``(prompt, chosen, rejected)`` already emitted by an earlier group is not
    emitted again. ``prompt_ids`` names the prompts that have an id in the data.
    """
    prompt_ids = prompt_ids or {}
    rows: list[dict] = []
    seen: set[tuple[str, str, str]] = set()
    for group, (prompt, samples) in enumerate(zip(prompts, groups, strict=True)):
        kept = [(text, ended) for text, ended in samples if len(text.split()) >= min_words]
        for pair, chosen_ended, rejected_ended in ranked_pairs(prompt, kept, rank):
            key = (pair["prompt"], pair["chosen"], pair["rejected"])
            if key in seen:
                continue
            seen.add(key)
            rows.append(
                {
                    **pair,
                    **({"prompt_id": prompt_ids[prompt]} if prompt in prompt_ids else {}),
                    "source": SOURCE,
                    "group": group,  # the K responses ranked together: the reward model holds out whole groups
                    "chosen_ended": chosen_ended,
                    "rejected_ended": rejected_ended,
                }
            )
    return rows


def sampled_labeller(rank: Ranker, min_words: int = 1, prompt_ids: Mapping[str, str] | None = None) -> Labeller:
    """``rank_sampled`` with ``rank``: what comparison collection hands the policy's samples to."""

    def label(prompts: Sequence[str], groups: Sequence[Sequence[tuple[str, bool]]]) -> list[dict]:
        return rank_sampled(prompts, groups, rank, min_words, prompt_ids)

    return label
