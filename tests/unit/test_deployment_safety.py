"""What a deployment run's parameters may set (flows/execution/deployment_safety.py), by known answers: keys that run
code or
name a path are refused unless the worker's environment allows them; everything else passes. (Through a real
deployment: tests/integration/test_prefect_deployment.py.)"""

import pytest

from components.config import ConfigError
from flows.execution.deployment_safety import MAY_SET, refuse_unsafe_parameters, refused_parameters

DEFAULTS = {"root": "/srv/project", "params": "/srv/project/params.yaml"}


def refused(overrides, may_set=(), **paths):
    return refused_parameters(overrides, {**DEFAULTS, **paths}, DEFAULTS, set(may_set))


def test_tuning_keys_pass_and_code_or_path_keys_are_refused():
    assert refused(["ppo.lr=1e-5", "seed=3", "gate.modes=[greedy]", "tracking.registered_model=m"]) == []
    assert refused(["evaluation.judge.entry_point=os:system", "ppo.lr=1"]) == ["evaluation.judge.entry_point"]
    assert refused(["data.files.preferences=/etc/shadow"]) == ["data.files.preferences"]
    assert refused(["tracking.uri=http://elsewhere:5000", "versioning.remote_url=s3://theirs"]) == [
        "tracking.uri",
        "versioning.remote_url",
    ]


def test_a_whole_section_that_holds_a_guarded_key_is_refused():
    assert refused(["evaluation.judge={kind: python, entry_point: 'os:system'}"]) == ["evaluation.judge"]
    assert refused(["data={source: files}"]) == ["data"]
    assert refused(["evaluation.samples_per_prompt=4"]) == []  # a sibling of the judge, not above it


def test_the_flows_own_paths_may_keep_the_deployments_values_only():
    assert refused([]) == []
    assert refused([], root="/tmp/other") == ["root"]
    assert refused([], params="/tmp/their-params.yaml") == ["params"]


def test_the_workers_allowance_lets_a_key_and_what_is_under_it_through():
    assert refused(["data.files.preferences=/data/p.jsonl"], may_set={"data.files"}) == []
    assert refused(["data={source: files}"], may_set={"data.files"}) == ["data"]  # the whole section is more
    assert refused([], may_set={"root"}, root="/tmp/other") == []


def test_the_refusal_names_the_keys_and_how_to_allow_them(monkeypatch):
    monkeypatch.setenv(MAY_SET, "root")
    paths = {**DEFAULTS, "root": "/tmp/other"}
    refuse_unsafe_parameters([], paths, DEFAULTS)  # allowed: no error
    with pytest.raises(ConfigError, match=rf"may not set evaluation\.judge\.entry_point: .* {MAY_SET}="):
        refuse_unsafe_parameters(["evaluation.judge.entry_point=os:system"], paths, DEFAULTS)
