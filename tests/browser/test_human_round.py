"""A human judge's round as people do it, in headless Chromium: the main job (smoke profile, `evaluation.judge.kind:
human`) runs against the session's Prefect and MLflow servers and pauses; the Prefect UI shows the paused run and,
behind Resume, the form asking for the labels file; on the exported labelling page (opened from disk, no network)
every pair is answered and the labels downloaded; the downloaded file, given to the UI's form, resumes the run, which
ends with a gate decision by those labels and a registry version.

Screenshots: `prefect-human-resume.png` and `human-labelling-page.png` (copied to $RLHF_SCREENSHOTS_DIR when set)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from mlflow import MlflowClient
from playwright.sync_api import expect
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows.labelling.human_judging import KEY, PAGE, PAIRS
from tests.browsers import WAIT, screenshot
from tests.flow_helpers import REPO, main_command, main_env
from tests.human_rounds import human_round, newest_round, wait_for_paused_run

pytestmark = pytest.mark.browser

REGISTERED = "browser-judged-policy"


def test_a_person_labels_the_pairs_in_chromium_and_resumes_the_run_from_the_prefect_ui(
    browser, prefect_server, mlflow_server, smoke_root, tmp_path
):
    api, root = prefect_server[0], smoke_root
    job = subprocess.Popen(
        main_command(root, [*human_round(REGISTERED, 2), f"tracking.uri={mlflow_server}"]),
        cwd=REPO,
        env=main_env(tmp_path, api),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        with temporary_settings({PREFECT_API_URL: api}):
            paused = wait_for_paused_run()
        ui = browser.new_context(viewport={"width": 1400, "height": 1000})
        ui.route(re.compile(r"^(?!https?://127\.0\.0\.1[:/])"), lambda route: route.abort())
        prefect = ui.new_page()
        prefect.set_default_timeout(WAIT)
        prefect.goto(f"{api.removesuffix('/api')}/runs/flow-run/{paused.id}")
        expect(prefect.locator(".state-badge").first).to_have_text("Paused")
        prefect.get_by_role("button", name="Resume").click()
        form = prefect.get_by_role("dialog")
        expect(form.get_by_text("Resume Flow Run")).to_be_visible()
        expect(form.get_by_text("Labels File", exact=True)).to_be_visible()
        screenshot(prefect, tmp_path / "prefect-human-resume.png")

        labels = label_every_pair(browser, newest_round(root), tmp_path)
        form.locator("textarea").fill(str(labels))
        form.get_by_role("button", name="Submit").click()
        output, _ = job.communicate(timeout=300)
        assert job.returncode == 0, output[-3000:]
    finally:
        if job.poll() is None:
            job.kill()
            job.communicate()
    versions = MlflowClient(mlflow_server).search_model_versions(f"name='{REGISTERED}'")
    assert [v.tags["gate.decision"] for v in versions] == ["promote"], "PPO won every pair the person labelled"
    assert "human judges win rate vs sft 1.000" in versions[0].tags["gate.sample.beats_every_supervised_baseline"]


def label_every_pair(browser, round_dir: Path, tmp_path: Path) -> Path:
    """The labelling page from disk, with no network at all: PPO's side picked on every pair, the labels
    downloaded; returns the downloaded file."""
    keys = [json.loads(line) for line in (round_dir / KEY).read_text().splitlines()]
    offline = browser.new_context(accept_downloads=True, viewport={"width": 1200, "height": 900})
    offline.route(re.compile(r"^https?://"), lambda route: route.abort())
    page = offline.new_page()
    page.set_default_timeout(WAIT)
    page.goto((round_dir / PAGE).as_uri())
    shown = [json.loads(line) for line in (round_dir / PAIRS).read_text().splitlines()]
    same_text = sum(pair["A"] == pair["B"] for pair in shown)  # tiny policies often say the same: already ties
    expect(page.get_by_text(f"{same_text} of {len(keys)} answered")).to_be_visible()
    for key in keys:
        page.locator(f'input[name="{key["pair_id"]}"][value="{key["ppo_side"]}"]').check()
    expect(page.get_by_text(f"{len(keys)} of {len(keys)} answered")).to_be_visible()
    screenshot(page, tmp_path / "human-labelling-page.png")
    with page.expect_download() as download:
        page.get_by_role("button", name="Download labels").click()
    labels = tmp_path / download.value.suggested_filename
    download.value.save_as(labels)
    offline.close()
    rows = [json.loads(line) for line in labels.read_text().splitlines()]
    assert {r["pair_id"]: r["choice"] for r in rows} == {k["pair_id"]: k["ppo_side"] for k in keys}
    return labels
