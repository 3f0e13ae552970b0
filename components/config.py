"""The one typed config of the pipeline, loaded from ``params.yaml``.

``params.yaml`` holds the ``default`` profile at its top level and, under ``profiles``,
named partial overrides (``smoke``, ...). A profile is deep-merged onto the defaults and the
result is validated: unknown keys and wrong types fail with the key's dotted path.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

DEFAULT_PARAMS = Path(__file__).resolve().parent.parent / "params.yaml"
DEFAULT_PROFILE = "default"


class ConfigError(ValueError):
    """A config that cannot be used; the message names the offending key."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SyntheticDataConfig(Section):
    """The embedded synthetic review task (see components/data/)."""

    eval_prompt_fraction: float = Field(0.2, gt=0, lt=1, description="share of distinct prompts held out for evaluation")
    n_demonstrations: int = Field(20000, ge=1, description="demonstrations written by the noisy demonstrator")
    n_comparison_prompts: int = Field(10000, ge=1, description="training prompts for the static comparison file")
    responses_per_comparison: int = Field(2, ge=2, le=9, description="K responses ranked per prompt; gives K*(K-1)/2 pairs")
    labeler_temperature: float = Field(0.6, gt=0, description="Bradley-Terry noise temperature of the simulated labeler")
    carelessness_alpha: float = Field(1.0, gt=0, description="Beta(alpha, beta) of each demonstration's carelessness")
    carelessness_beta: float = Field(1.5, gt=0, description="Beta(alpha, beta) of each demonstration's carelessness")


class UserFilesConfig(Section):
    """Real data: JSONL files or HF datasets saved with ``save_to_disk``."""

    demonstrations: str = Field(description="path of the demonstrations {prompt, response}")
    preferences: str = Field(description="path of the preferences {prompt, chosen, rejected}")
    eval_prompts: str = Field(description="path of the held-out prompts {prompt}")


class DataConfig(Section):
    source: Literal["synthetic", "files"] = Field("synthetic", description="generate the embedded task or import user files")
    dir: str = Field("data", description="the raw data directory, versioned by data.dvc")
    synthetic: SyntheticDataConfig = SyntheticDataConfig()
    files: UserFilesConfig | None = Field(None, description="required when source is 'files'")

    @model_validator(mode="after")
    def _files_given_for_file_source(self) -> "DataConfig":
        if self.source == "files" and self.files is None:
            raise ValueError("data.files must be set when data.source is 'files'")
        return self


class RowBounds(Section):
    min: int = Field(ge=0)
    max: int = Field(ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> "RowBounds":
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) exceeds max ({self.max})")
        return self


class ValidationConfig(Section):
    """Great Expectations suites run on every data file before training reads it."""

    min_response_words: int = Field(3, ge=1, description="shortest acceptable response")
    max_response_words: int = Field(60, ge=1, description="longest acceptable response")
    max_prompt_words: int = Field(40, ge=1, description="longest acceptable prompt")
    check_vocabulary: bool = Field(True, description="every word must be in the embedded task's vocabulary")
    chosen_position_min: float = Field(0.35, ge=0, le=1, description="lowest mean of chosen_position (share of pairs whose chosen response was shown second)")
    chosen_position_max: float = Field(0.65, ge=0, le=1, description="highest mean of chosen_position (share of pairs whose chosen response was shown second)")
    demonstrations_rows: RowBounds = RowBounds(min=1000, max=1_000_000)
    preferences_rows: RowBounds = RowBounds(min=1000, max=1_000_000)
    eval_prompts_rows: RowBounds = RowBounds(min=20, max=100_000)
    report_dir: str = Field("reports/validation", description="validation summary and Great Expectations Data Docs")
    max_examples: int = Field(5, ge=1, description="offending rows quoted per failed expectation")


class PrepareConfig(Section):
    """Turns the validated raw data into the exact inputs of the training stages."""

    dir: str = Field("artifacts/prepared", description="where the prepared files go")
    rm_valid_fraction: float = Field(0.1, gt=0, lt=1, description="share of preference pairs held out to measure the reward model")


class VersioningConfig(Section):
    remote_name: str = Field("local", description="DVC remote that push/pull use")
    remote_url: str = Field("../dvc-remote", description="remote location; relative paths are relative to .dvc/")
    push: bool = Field(True, description="push every new data version to the remote")


class Config(Section):
    profile: str = Field(DEFAULT_PROFILE, description="name of the profile this config was resolved from")
    seed: int = Field(0, description="seed of every random draw in the pipeline")
    data: DataConfig = DataConfig()
    validation: ValidationConfig = ValidationConfig()
    prepare: PrepareConfig = PrepareConfig()
    versioning: VersioningConfig = VersioningConfig()


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key.path=value")
    key, raw = item.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw)


def apply_overrides(raw: dict[str, Any], overrides: list[str] | dict[str, Any] | None) -> dict[str, Any]:
    """Apply ``a.b=value`` strings (values parsed as YAML) or a nested dict."""
    if not overrides:
        return raw
    if isinstance(overrides, dict):
        return _deep_merge(raw, overrides)
    result = copy.deepcopy(raw)
    for item in overrides:
        path, value = _parse_override(item)
        node = result
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
        node[path[-1]] = value
    return result


def _describe(error: ValidationError, source: str) -> str:
    lines = [f"invalid config ({source}):"]
    for err in error.errors():
        key = ".".join(str(p) for p in err["loc"]) or "<root>"
        if err["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key")
        else:
            lines.append(f"  {key}: {err['msg']} (got {err.get('input')!r})")
    return "\n".join(lines)


def load_config(
    profile: str = DEFAULT_PROFILE,
    overrides: list[str] | dict[str, Any] | None = None,
    path: str | Path = DEFAULT_PARAMS,
) -> Config:
    """Resolve ``profile`` from ``path`` and validate it; raise ConfigError naming the bad key."""
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    profiles = document.pop("profiles", {}) or {}
    if profile != DEFAULT_PROFILE and profile not in profiles:
        known = ", ".join([DEFAULT_PROFILE, *sorted(profiles)])
        raise ConfigError(f"{path}: unknown profile {profile!r} (known: {known})")
    raw = _deep_merge(document, profiles.get(profile, {}) or {})
    raw = apply_overrides(raw, overrides)
    raw["profile"] = profile
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, f"{path}, profile {profile!r}")) from None


def profile_names(path: str | Path = DEFAULT_PARAMS) -> list[str]:
    document = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    return [DEFAULT_PROFILE, *sorted(document.get("profiles", {}) or {})]
