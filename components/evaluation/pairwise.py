"""People as the judge: blinded pairwise comparisons of PPO against each baseline on held-out prompts.

Each pair puts PPO's response and a baseline's response to the same prompt (the same sample index) on sides A and B,
PPO's side drawn at random; the pairs are shuffled and named by ids that say nothing of who wrote what. Labellers see
``{pair_id, prompt, A, B}`` only (a JSONL file and a self-contained HTML page) and answer ``{pair_id, choice}`` with
choice A, B or tie. The key (which side is PPO's, the mode and the baseline) stays with the run. PPO's win rate
against a baseline is then its share of that baseline's pairs won, ties half, with a Wilson interval (one pair per
prompt): the same statistic as a scoring judge's under greedy decoding, and the gate tests it the same way.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from components.evaluation.intervals import win_estimate

PPO = "ppo"


@dataclass(frozen=True)
class Pair:
    pair_id: str
    mode: str
    baseline: str
    prompt: str
    a: str
    b: str
    ppo_side: str  # "A" or "B"

    def shown(self) -> dict:
        """What a labeller sees."""
        return {"pair_id": self.pair_id, "prompt": self.prompt, "A": self.a, "B": self.b}

    def key(self) -> dict:
        """What only the run knows."""
        return {"pair_id": self.pair_id, "mode": self.mode, "baseline": self.baseline, "ppo_side": self.ppo_side}


def pair_id(round_id: str, mode: str, baseline: str, index: int) -> str:
    """Opaque to the labeller; ``round_id`` names what the responses came from (the policies, the prompts, the
    decoding), so a labels file for other responses matches none of the pairs, and a rerun of the same policies
    exports the same pairs."""
    return hashlib.sha256(f"{round_id}/{mode}/{baseline}/{index}".encode()).hexdigest()[:16]


def blinded_pairs(
    round_id: str,
    mode: str,
    prompts: Sequence[str],
    texts: Mapping[str, Sequence[str]],
    per_baseline: int,
    stride: int,
    seed: int,
) -> list[Pair]:
    """PPO's response against each other policy's to the same prompt and sample; ``texts`` maps a policy to its
    responses in the order of ``prompts`` and must hold ``ppo``. One sample in every ``stride`` (the samples per
    prompt) is taken, so the first ``per_baseline`` pairs of a baseline cover as many prompts as they can."""
    rng = random.Random(f"{seed}/{round_id}/{mode}")
    indices = range(0, len(prompts), stride)[:per_baseline]
    pairs = []
    for baseline, responses in texts.items():
        if baseline == PPO:
            continue
        for i in indices:
            ppo_side = rng.choice("AB")
            ppo, other = texts[PPO][i], responses[i]
            a, b = (ppo, other) if ppo_side == "A" else (other, ppo)
            pairs.append(Pair(pair_id(round_id, mode, baseline, i), mode, baseline, prompts[i], a, b, ppo_side))
    return pairs


def ppo_win_rates(keys: Sequence[Mapping], labels: Mapping[str, str]) -> dict[str, dict[str, dict]]:
    """{mode: {baseline: win rate}} from the key rows and the labels (pair_id -> A | B | tie); pairs without a
    label are left out (validation decides whether enough were answered)."""
    wins: dict[tuple[str, str], list[float]] = {}
    for key in keys:
        choice = labels.get(key["pair_id"])
        if choice is None:
            continue
        won = 0.5 if choice == "tie" else float(choice == key["ppo_side"])
        wins.setdefault((key["mode"], key["baseline"]), []).append(won)
    rates: dict[str, dict[str, dict]] = {}
    for (mode, baseline), outcomes in wins.items():
        rates.setdefault(mode, {})[baseline] = win_estimate([[outcome] for outcome in outcomes]).as_dict()
    return rates
