"""People as the judge: blinded pairwise comparisons of PPO against each baseline on held-out prompts.

Each pair puts PPO's response and a baseline's response to the same prompt (the same sample index) on sides A and B,
PPO's side drawn at random; the pairs are shuffled and named by ids that say nothing of who wrote what. Labellers see
``{pair_id, prompt, A, B}`` only (a JSONL file and a self-contained HTML page) and answer ``{pair_id, choice}`` with
choice A, B or tie. The key (which side is PPO's, the mode and the baseline) stays with the run. PPO's win rate
against a baseline is then its share of that baseline's pairs won, ties half, with a Wilson interval: the same
statistic as a scoring judge's.
"""

from __future__ import annotations

import hashlib
import html
import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from components.data.expectations import Expectation
from components.evaluation.intervals import wilson

CHOICES = ("A", "B", "tie")
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


def shuffled(pairs: Sequence[Pair], seed: int) -> list[Pair]:
    """The order labellers see: neighbours say nothing of mode or baseline."""
    order = list(pairs)
    random.Random(seed).shuffle(order)
    return order


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
        rates.setdefault(mode, {})[baseline] = wilson(sum(outcomes), len(outcomes)).as_dict()
    return rates


def label_rules(pair_ids: Sequence[str], min_answers: int) -> list[Expectation]:
    """What a labels file must be: answers to this run's pairs only, one per pair, a known choice, enough of them."""
    return [
        Expectation(
            "expect_column_values_to_be_in_set",
            "every pair_id is one of this run's pairs",
            {"column": "pair_id", "value_set": sorted(pair_ids)},
            "pair_id",
        ),
        Expectation("expect_column_values_to_be_unique", "one answer per pair", {"column": "pair_id"}, "pair_id"),
        Expectation(
            "expect_column_values_to_be_in_set",
            "choice is A, B or tie",
            {"column": "choice", "value_set": list(CHOICES)},
            "choice",
        ),
        Expectation(
            "expect_table_row_count_to_be_between",
            f"answers at least {min_answers} of the {len(pair_ids)} pairs",
            {"min_value": min_answers, "max_value": None},
        ),
    ]


def labelling_page(rows: Sequence[Mapping], title: str, download_name: str) -> str:
    """A page that works from disk with no network: each pair with A / B / tie (pre-set to tie when both sides are
    the same text), a count, and a button that downloads the answers as JSONL lines ``{"pair_id": ..., "choice":
    ...}``."""
    data = json.dumps([dict(r) for r in rows]).replace("</", "<\\/")
    return PAGE.format(title=html.escape(title), data=data, download_name=json.dumps(download_name))


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy"
      content="default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'">
<title>{title}</title>
<style>
body {{ font-family: sans-serif; max-width: 60em; margin: 2em auto; }}
.pair {{ border: 1px solid #ccc; border-radius: 6px; padding: 0.8em; margin: 1em 0; }}
.prompt {{ font-weight: bold; }}
.sides {{ display: flex; gap: 1em; }}
.side {{ flex: 1; background: #f6f6f6; padding: 0.6em; white-space: pre-wrap; }}
#bar {{ position: sticky; top: 0; background: white; padding: 0.5em 0; border-bottom: 1px solid #ccc; }}
</style></head>
<body>
<h1>{title}</h1>
<p>For each prompt, pick the better response: A, B, or tie (pairs whose two responses are the same text start
as tie).
Nothing leaves this page until you download your answers.</p>
<div id="bar"><span id="count"></span> <button id="download" type="button">Download labels</button></div>
<div id="pairs"></div>
<script>
const PAIRS = {data};
const answers = {{}};
const list = document.getElementById("pairs");
function count() {{
  document.getElementById("count").textContent = Object.keys(answers).length + " of " + PAIRS.length + " answered";
}}
PAIRS.forEach((pair, n) => {{
  const box = document.createElement("div");
  box.className = "pair";
  box.dataset.pairId = pair.pair_id;
  const prompt = document.createElement("div");
  prompt.className = "prompt";
  prompt.textContent = (n + 1) + ". " + pair.prompt;
  const sides = document.createElement("div");
  sides.className = "sides";
  for (const side of ["A", "B"]) {{
    const text = document.createElement("div");
    text.className = "side";
    text.textContent = side + ": " + pair[side];
    sides.appendChild(text);
  }}
  const choices = document.createElement("div");
  for (const choice of ["A", "B", "tie"]) {{
    const label = document.createElement("label");
    const input = document.createElement("input");
    input.type = "radio";
    input.name = pair.pair_id;
    input.value = choice;
    input.addEventListener("change", () => {{ answers[pair.pair_id] = choice; count(); }});
    if (choice === "tie" && pair.A === pair.B) {{  // the same text on both sides is a tie: answered already
      input.checked = true;
      answers[pair.pair_id] = "tie";
    }}
    label.appendChild(input);
    label.appendChild(document.createTextNode(" " + choice + " "));
    choices.appendChild(label);
  }}
  box.append(prompt, sides, choices);
  list.appendChild(box);
}});
count();
document.getElementById("download").addEventListener("click", () => {{
  const lines = PAIRS.filter(p => p.pair_id in answers)
    .map(p => JSON.stringify({{pair_id: p.pair_id, choice: answers[p.pair_id]}}) + "\\n");
  const link = document.createElement("a");
  link.href = URL.createObjectURL(new Blob(lines, {{type: "application/jsonl"}}));
  link.download = {download_name};
  link.click();
}});
</script>
</body></html>
"""
