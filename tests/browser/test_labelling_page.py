"""The labelling page people answer (components/labelling/pairwise_labels.py), opened from disk in headless Chromium
with hostile text in its prompts and responses: every pair is shown, the text verbatim, nothing of it runs; answers
survive a reload, even one that loses the browser's storage; the download holds them; a mangled address restores nothing
false. Before, a `<!--<script` in a response cut the page's script short (no pair shown), a reload lost every answer,
and then one reload in about 20 still did (Chromium dropping a file:// page's storage)."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest
from playwright.sync_api import expect

from components.labelling.pairwise_labels import labelling_page
from tests.browsers import WAIT

pytestmark = pytest.mark.browser

HOSTILE = [
    "<!--<script>",
    "</script><script>document.title = 'hijacked'</script>",
    "<img src=x onerror=\"document.title = 'hijacked'\">",
    "a & b <b>bold</b> \u2028 line",
]
ROWS = [
    {"pair_id": f"p{i}", "prompt": f"prompt {i} {text}", "A": f"left {text}", "B": f"right {i}"}
    for i, text in enumerate(HOSTILE)
]


@pytest.fixture
def page_file(tmp_path):
    path = tmp_path / "label.html"
    path.write_text(labelling_page(ROWS, "Label <these> & those", "labels-run1.jsonl"), encoding="utf-8")
    return path


def test_hostile_text_is_shown_verbatim_and_answers_survive_a_reload(browser, page_file, tmp_path):
    context = browser.new_context(accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(WAIT)
    page.goto(page_file.as_uri())
    pairs = page.locator(".pair")
    expect(pairs).to_have_count(len(ROWS))
    assert page.title() == "Label <these> & those"  # no script of the data ran
    for n, row in enumerate(ROWS):
        expect(pairs.nth(n).locator(".prompt")).to_have_text(f"{n + 1}. {row['prompt']}")
        expect(pairs.nth(n).locator(".side").first).to_have_text(f"A: {row['A']}")
    assert page.locator("img").count() == 0
    expect(page.locator("#count")).to_have_text(f"0 of {len(ROWS)} answered")

    chosen = {"p0": "A", "p2": "B", "p3": "tie"}
    for pair_id, choice in chosen.items():
        page.locator(f'input[name="{pair_id}"][value="{choice}"]').check()
    expect(page.locator("#count")).to_have_text(f"3 of {len(ROWS)} answered")

    page.reload()  # a person's browser closing, or a slip of F5
    expect(page.locator(".pair")).to_have_count(len(ROWS))
    expect(page.locator("#count")).to_have_text(f"3 of {len(ROWS)} answered")
    for pair_id, choice in chosen.items():
        expect(page.locator(f'input[name="{pair_id}"][value="{choice}"]')).to_be_checked()

    page.evaluate("localStorage.clear()")  # what Chromium did to a file:// page's storage on some reloads
    page.reload()
    expect(page.locator("#count")).to_have_text(f"3 of {len(ROWS)} answered")  # the page's address kept them
    page.locator('input[name="p1"][value="B"]').check()

    with page.expect_download() as download:
        page.locator("#download").click()
    saved = tmp_path / "labels.jsonl"
    download.value.save_as(saved)
    lines = [json.loads(line) for line in saved.read_text().splitlines()]
    assert lines == [
        {"pair_id": "p0", "choice": "A"},
        {"pair_id": "p1", "choice": "B"},
        {"pair_id": "p2", "choice": "B"},
        {"pair_id": "p3", "choice": "tie"},
    ]
    context.close()


def test_another_runs_answers_are_not_restored(browser, page_file, tmp_path):
    """Answers are kept per labels file name (a run's own): another run's page opens unanswered."""
    context = browser.new_context()
    page = context.new_page()
    page.goto(page_file.as_uri())
    page.locator('input[name="p0"][value="A"]').check()
    other = tmp_path / "other" / "label.html"
    other.parent.mkdir()
    other.write_text(labelling_page(ROWS, "another run", "labels-run2.jsonl"), encoding="utf-8")
    page.goto(other.as_uri())
    expect(page.locator("#count")).to_have_text(f"0 of {len(ROWS)} answered")
    context.close()


def test_a_mangled_address_restores_only_real_answers(browser, page_file):
    """The answers in the page's address are the person's to edit: a choice that is not A, B or tie, a pair that is not
    on the page, or an address that does not decode restores nothing of itself."""
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(WAIT)
    hand_made = {"p0": "B", "p1": "<b>both</b>", "p9": "A"}
    page.goto(page_file.as_uri() + "#" + quote(json.dumps(hand_made)))
    expect(page.locator("#count")).to_have_text(f"1 of {len(ROWS)} answered")
    expect(page.locator('input[name="p0"][value="B"]')).to_be_checked()
    page.goto(page_file.as_uri() + "#%E0%A4%A")  # not UTF-8 percent-escapes: decoding throws
    page.reload()  # the same page with another address is not loaded again without it
    expect(page.locator(".pair")).to_have_count(len(ROWS))
    expect(page.locator("#count")).to_have_text(f"0 of {len(ROWS)} answered")
    context.close()
