"""The typed config: profiles, overrides, and errors that name the key."""

import pytest

from components.config import DEFAULT_PARAMS, ConfigError, load_config, profile_names, reward_model_config


@pytest.mark.parametrize("profile", profile_names())
def test_every_profile_in_params_yaml_is_valid(profile):
    assert load_config(profile).profile == profile


def test_smoke_profile_overrides_only_what_it_names():
    default, smoke = load_config("default"), load_config("smoke")
    assert smoke.data.synthetic.n_demonstrations < default.data.synthetic.n_demonstrations
    assert smoke.data.synthetic.labeler_temperature == default.data.synthetic.labeler_temperature
    assert smoke.seed == default.seed


def test_dotted_overrides_are_parsed_as_yaml():
    cfg = load_config("smoke", ["data.synthetic.labeler_temperature=0.3", "seed=7"])
    assert cfg.data.synthetic.labeler_temperature == 0.3 and cfg.seed == 7


def test_unknown_key_is_rejected_with_its_path():
    with pytest.raises(ConfigError, match=r"data\.synthetic\.n_demos: unknown key"):
        load_config("smoke", ["data.synthetic.n_demos=5"])


def test_wrong_type_is_rejected_with_its_path():
    with pytest.raises(ConfigError, match=r"data\.synthetic\.n_demonstrations: .*integer"):
        load_config("smoke", ["data.synthetic.n_demonstrations=many"])


@pytest.mark.parametrize(
    "override, key",
    [
        ("data.synthetic.labeler_temperature=-1", "data.synthetic.labeler_temperature"),
        ("data.synthetic.n_demonstrations=0", "data.synthetic.n_demonstrations"),
        ("validation.preferences_rows={min: 10, max: 5}", "validation.preferences_rows"),
    ],
)
def test_impossible_values_are_rejected_with_their_path(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config("smoke", [override])


def test_unknown_key_inside_a_profile_is_rejected(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(DEFAULT_PARAMS.read_text() + "\n  broken:\n    data:\n      colour: red\n")
    with pytest.raises(ConfigError, match=r"data\.colour: unknown key"):
        load_config("broken", path=params)


def test_unknown_profile_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"unknown profile 'nightly'.*smoke"):
        load_config("nightly")


def test_file_source_requires_file_paths():
    with pytest.raises(ConfigError, match=r"data\.files must be set"):
        load_config("smoke", ["data.source=files"])


@pytest.mark.parametrize(
    "override, key",
    [
        ("tracking.uri=http://bob:planted-pw-1@127.0.0.1:5000", "tracking.uri"),
        ("tracking.uri=https://planted-pw-1@mlflow.example", "tracking.uri"),  # a token as user info
        ("versioning.remote_url=s3://AKIA:planted-pw-1@bucket/data", "versioning.remote_url"),
    ],
)
def test_credentials_in_a_url_are_refused_naming_the_key_and_never_echoed(override, key):
    with pytest.raises(ConfigError) as caught:
        load_config("smoke", [override])
    assert f"{key}: holds credentials in the URL" in str(caught.value) and "MLFLOW_TRACKING_PASSWORD" in str(
        caught.value
    )
    assert "planted-pw-1" not in str(caught.value)


@pytest.mark.parametrize(
    "override",
    [
        "tracking.uri=http://127.0.0.1:5000",
        "versioning.remote_url=ssh://deploy@host/data",
        "versioning.remote_url=s3://bucket/data",
        "tracking.uri=sqlite:////tmp/mlflow.db",
    ],
)
def test_urls_without_credentials_are_accepted(override):
    load_config("smoke", [override])


def test_a_tracking_uri_with_credentials_in_the_environment_is_refused(monkeypatch, tmp_path):
    from components.adapters.tracking import resolve_uri

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://bob:planted-pw-1@127.0.0.1:5000")
    with pytest.raises(ConfigError, match=r"^\$MLFLOW_TRACKING_URI holds credentials") as caught:
        resolve_uri(load_config("smoke").tracking, tmp_path)
    assert "planted-pw-1" not in str(caught.value)


def test_the_tuning_sweep_gives_every_method_the_same_budget_of_valid_configurations():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "tune", Path(__file__).resolve().parents[2] / "benchmarks" / "tune.py"
    )
    tune = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tune)
    cfg = load_config("default")
    rl = {"ppo", "ppo_length", "rloo", "grpo", "reinforce_pp"}  # ppo_length: PPO's second sweep
    assert set(tune.GRID) == rl | set(cfg.gate.baselines) - {"sft"}
    for algorithm in ("rloo", "grpo", "reinforce_pp"):  # each critic-free algorithm tunes itself, not PPO
        assert {c["rl.algorithm"] for c in tune.GRID[algorithm]} == {algorithm}
    for method, configs in tune.GRID.items():
        assert len(configs) == cfg.tuning.configurations_per_method, method
        assert len({str(c) for c in configs}) == len(configs), method
        for config in configs:
            load_config("default", tune.overrides_of(config))  # every key exists and every value is valid
    # training passes, by hand: PPO's reward models times its iterations over the profile's 80; a baseline's epochs
    assert tune.training_passes("ppo_length", {"ppo.iterations": 160, "ppo.kl.kl_coef": 0.05}, cfg) == 2.0
    assert tune.training_passes("ppo", {"reward.ensemble_size": 3}, cfg) == 3.0
    assert tune.training_passes("grpo", {"rl.algorithm": "grpo", "ppo.lr": 1e-4}, cfg) == 1.0
    assert tune.training_passes("dpo", {"baselines.dpo.epochs": 2.0}, cfg) == 2.0


def test_every_compared_method_must_share_one_learning_rate_schedule():
    """A fair race: PPO's linear decay against a baseline's constant rate is refused, naming both sections."""
    assert {load_config("default").ppo.lr_schedule, load_config("default").baselines.dpo.lr_schedule} == {"linear"}
    with pytest.raises(ConfigError, match=r"ppo\.lr_schedule=linear.*baselines\.dpo\.lr_schedule=constant"):
        load_config("smoke", ["baselines.dpo.lr_schedule=constant"])
    both = load_config(
        "smoke",
        [f"{s}.lr_schedule=constant" for s in ("sft", "ppo")]
        + [f"baselines.{b}.lr_schedule=constant" for b in ("chosen", "top_ranked", "combined", "dpo")],
    )
    assert both.ppo.lr_schedule == "constant"


def test_a_rollout_batch_of_broken_groups_is_refused():
    with pytest.raises(ConfigError, match=r"rl\.samples_per_prompt \(3\).*rloo"):
        load_config("smoke", ["rl.algorithm=rloo", "rl.samples_per_prompt=3"])
    assert load_config("smoke", ["rl.samples_per_prompt=3"]).rl.group_size == 1  # PPO samples one a prompt


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["reward.model={}"], "neither a size nor a local_dir"),
        (["reward.model={n_embd: 130}"], r"reward.model: .*n_embd \(130\) must be divisible by n_head \(4\)"),
        (["reward.model={local_dir: /models/rm}"], "local_dir is set but model.source is 'scratch'"),
        (
            ["model.source=local", "model.local_dir=/models/policy", "reward.model={n_layer: 8}"],
            "reward.model sets n_layer but model.source is 'local'",
        ),
    ],
)
def test_a_reward_model_of_its_own_must_be_of_the_policy_s_kind(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("default", overrides)


def test_the_reward_model_s_own_size_replaces_only_what_it_names():
    cfg = load_config("default", ["reward.model={n_layer: 6}"])
    own = reward_model_config(cfg)
    assert (own.n_layer, own.n_embd, own.n_head) == (6, cfg.model.n_embd, cfg.model.n_head)
    assert own.max_response_tokens == cfg.model.max_response_tokens
    assert reward_model_config(load_config("default")) == load_config("default").model
