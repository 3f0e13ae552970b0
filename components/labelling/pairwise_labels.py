"""Labels people give to pairs of responses, whatever the pairs are for (the human judge's blinded comparisons, a
labelling round's samples): the offline page they answer on, and the rules a labels file must keep.

A labeller sees ``{pair_id, prompt, A, B}`` rows and answers ``{pair_id, choice}`` lines, choice A, B or tie.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import random
from collections.abc import Mapping, Sequence
from itertools import combinations
from typing import TypeVar

from components.data.expectations import Expectation

CHOICES = ("A", "B", "tie")
HUMAN = "human"  # the ``source`` of preference rows people labelled
T = TypeVar("T")


def shuffled(pairs: Sequence[T], seed: int) -> list[T]:
    """The order labellers see: neighbours say nothing of where a pair came from."""
    order = list(pairs)
    random.Random(seed).shuffle(order)
    return order


def sample_pairs(
    round_id: str,
    track: str,
    prompts: Sequence[str],
    groups: Sequence[Sequence[tuple[str, bool]]],
    min_words: int,
    seed: int,
) -> list[dict]:
    """A labelling round's samples as pairs for people: every pair of each prompt's distinct responses (InstructGPT's
    K-choose-2, answered pair by pair), sides drawn at random. Responses shorter than ``min_words`` words are left
    out and identical ones collapsed, as for the simulated labeller. Key rows: ``{pair_id, track, group, prompt, A,
    B, A_ended, B_ended}``; ``round_id`` names what was sampled, so a rerun exports the same ids."""
    rng = random.Random(f"{seed}/{round_id}/{track}/sides")
    rows = []
    for group, (prompt, samples) in enumerate(zip(prompts, groups, strict=True)):
        ended: dict[str, bool] = {}
        for text, flag in samples:
            if len(text.split()) >= min_words:
                ended.setdefault(text, flag)
        for first, second in combinations(list(ended), 2):
            a, b = (first, second) if rng.random() < 0.5 else (second, first)
            pair_id = hashlib.sha256(f"{round_id}/{track}/{group}/{first}/{second}".encode()).hexdigest()[:16]
            rows.append(
                {
                    "pair_id": pair_id,
                    "track": track,
                    "group": group,
                    "prompt": prompt,
                    "A": a,
                    "B": b,
                    "A_ended": ended[a],
                    "B_ended": ended[b],
                }
            )
    return rows


def shown(keys: Sequence[Mapping]) -> list[dict]:
    """What a labeller sees of key rows: ``{pair_id, prompt, A, B}``."""
    return [{name: key[name] for name in ("pair_id", "prompt", "A", "B")} for key in keys]


def preference_rows(keys: Sequence[Mapping], labels: Mapping[str, str]) -> dict[str, list[dict]]:
    """Each pair answered A or B as a preference row of its track, in the preference file's schema: ``{prompt,
    chosen, rejected, chosen_position (0: chosen was shown as A), source, group, chosen_ended, rejected_ended}``.
    Ties and unanswered pairs give no row."""
    rows: dict[str, list[dict]] = {}
    for key in keys:
        choice = labels.get(key["pair_id"])
        if choice not in ("A", "B"):
            continue
        other = "B" if choice == "A" else "A"
        rows.setdefault(key["track"], []).append(
            {
                "prompt": key["prompt"],
                "chosen": key[choice],
                "rejected": key[other],
                "chosen_position": 0 if choice == "A" else 1,
                "source": HUMAN,
                "group": key["group"],
                "chosen_ended": key[f"{choice}_ended"],
                "rejected_ended": key[f"{other}_ended"],
            }
        )
    return rows


def min_answers(share: float, pairs: int) -> int:
    """How many of ``pairs`` must be answered: ``share`` of them rounded up, at least one."""
    return max(1, math.ceil(share * pairs - 1e-9))  # 1e-9: 0.3 * 10 is 3.0000000000000004


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
    ...}``. Answers are kept in the browser's storage under the download's name and in the page's address (Chromium
    can lose a file:// page's storage across a reload), so a reload keeps them.

    The rows are embedded as JSON with ``<``, ``>`` and ``&`` as JSON escapes: no text (``</script>``, ``<!--``)
    can end or re-open the page's script; the page shows every text as text, never as markup."""
    data = json.dumps([dict(r) for r in rows]).translate(SCRIPT_SAFE)
    return PAGE.format(
        title=html.escape(title), data=data, download_name=json.dumps(download_name).translate(SCRIPT_SAFE)
    )


# JSON escapes for what HTML reads inside a script (json.dumps already escapes every non-ASCII character)
SCRIPT_SAFE = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"})


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
const STORE = "rlhf-labels:" + {download_name};  // this run's answers, kept across reloads
const CHOICES = ["A", "B", "tie"];
const answers = restored();
function parsed(text) {{
  try {{ const value = JSON.parse(text || "{{}}"); return value && typeof value === "object" ? value : {{}}; }}
  catch (error) {{ return {{}}; }}
}}
function restored() {{
  let stored = {{}}, addressed = {{}};
  try {{ stored = parsed(localStorage.getItem(STORE)); }} catch (error) {{ }}  // storage off
  // the page's own address keeps them too: Chromium can lose a file:// page's storage across a reload
  try {{ addressed = parsed(decodeURIComponent(location.hash.slice(1))); }} catch (error) {{ }}  // a mangled address
  const kept = Object.assign(stored, addressed);
  const known = new Set(PAIRS.map(p => p.pair_id));
  return Object.fromEntries(Object.entries(kept).filter(([id, choice]) => known.has(id) && CHOICES.includes(choice)));
}}
function keep() {{
  try {{ localStorage.setItem(STORE, JSON.stringify(answers)); }} catch (error) {{ }}
  history.replaceState(null, "", "#" + encodeURIComponent(JSON.stringify(answers)));
}}
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
  for (const choice of CHOICES) {{
    const label = document.createElement("label");
    const input = document.createElement("input");
    input.type = "radio";
    input.name = pair.pair_id;
    input.value = choice;
    input.addEventListener("change", () => {{ answers[pair.pair_id] = choice; keep(); count(); }});
    if (!(pair.pair_id in answers) && choice === "tie" && pair.A === pair.B) {{  // the same text: a tie already
      answers[pair.pair_id] = "tie";
    }}
    input.checked = answers[pair.pair_id] === choice;
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
