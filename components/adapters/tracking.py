"""The MLflow adapter: runs, metrics, plots, tables, models and the model registry.

All MLflow I/O of the pipeline goes through here; the training and evaluation code never imports
mlflow. Runs are addressed by id through ``MlflowClient`` (no fluent active-run stack), so stages
may run in any thread Prefect picks.

Store: ``tracking.uri`` from the config, else ``$MLFLOW_TRACKING_URI``, else the project's own
``mlruns/``: an SQLite database ``mlruns/mlflow.db`` with artefacts under ``mlruns/artifacts``
(MLflow 3 retired the plain-file store). ``mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db``
shows it; ``infra/mlflow_server.sh`` serves the same store over HTTP on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from components import locks
from components.adapters import plots
from components.config import CREDENTIALS_ELSEWHERE, ConfigError, TrackingConfig, holds_credentials

if TYPE_CHECKING:
    from transformers import GenerationConfig

STORE_DIR = "mlruns"
CHAMPION, CHALLENGER = "champion", "challenger"
# mlflow.transformers.log_model would otherwise infer requirements by importing every optional
# dependency of transformers (torchvision among them, which the CPU torch cannot sit beside)
POLICY_REQUIREMENTS = ("torch", "transformers", "tokenizers", "safetensors")
_BATCH = 500  # MLflow's limit of metrics per log_batch call is 1000; params 100


def local_store_uri(root: str | Path) -> str:
    store = (Path(root) / STORE_DIR).resolve()
    store.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{store / 'mlflow.db'}"


def resolve_uri(cfg: TrackingConfig, root: str | Path) -> str:
    """The config's URI (validated), else ``$MLFLOW_TRACKING_URI``, else the project's own store. A URI
    is printed, recorded and handed to the PPO launch, so one holding credentials is refused."""
    from_environment = os.environ.get("MLFLOW_TRACKING_URI")
    if not cfg.uri and holds_credentials(from_environment):
        raise ConfigError(f"$MLFLOW_TRACKING_URI holds credentials in the URL; {CREDENTIALS_ELSEWHERE}")
    return cfg.uri or from_environment or local_store_uri(root)


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists become JSON strings."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, (list, tuple)) else value
    return flat


def _finite_metrics(values: dict[str, Any]) -> dict[str, float]:
    """Numbers only; NaN/inf are kept out of MLflow (the gate reports them instead)."""
    out = {}
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value):
            out[key] = float(value)
    return out


@dataclass(frozen=True)
class DataInput:
    """A data version as ``mlflow.data`` shows it beside the runs that read it: named and located, no rows uploaded.

    MLflow keeps one dataset per (name, digest) in an experiment: the first run to log a version fixes its source
    and profile, so both hold only what belongs to the version, nothing of the run that logged it.
    """

    name: str  # the tracked directory, e.g. "data"
    md5: str  # the directory's md5 as its .dvc file records it: the dataset's digest
    dvc_file: str  # where that md5 is recorded ...
    remote: str | None  # ... and the DVC remote the data is pushed to: together, the dataset's source
    profile: dict[str, Any]  # how the version was made (recipe hash, source, seed)

    def entity(self) -> Dataset:
        # source type "local" with a "uri": the MLflow UI shows it as the dataset's path, and
        # mlflow.data.get_source() resolves it (it reads "uri" only; the remote rides along)
        source = {"uri": self.dvc_file, **({"dvc_remote": self.remote} if self.remote else {})}
        return Dataset(self.name, self.md5, "local", json.dumps(source), profile=json.dumps(self.profile))


def transient_error(error: BaseException) -> bool:
    """What a tracking-server hiccup raises (network errors, the server's own 5xx), not our own bugs."""
    import requests

    if isinstance(error, ConnectionError | TimeoutError | requests.exceptions.RequestException):
        return True
    return isinstance(error, MlflowException) and error.get_http_status_code() >= 500


@dataclass
class FinishedStage:
    """A stage run of a finished pipeline run, as a report reads it."""

    name: str
    tags: dict[str, str]
    metrics: dict[str, float]
    history: Callable[[str], list[float]]  # a metric's logged values, in order


def latest_pipeline_stages(uri: str, experiment: str) -> list[FinishedStage]:
    """The stage runs of the latest pipeline run in ``experiment`` of the tracking store at ``uri``."""
    client = MlflowClient(uri)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    [parent] = client.search_runs([experiment_id], "tags.mlflow.runName LIKE 'pipeline-%'", max_results=1)
    children = client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'", max_results=100)
    return [
        FinishedStage(
            run.data.tags["mlflow.runName"],
            dict(run.data.tags),
            dict(run.data.metrics),
            lambda key, run_id=run.info.run_id: [m.value for m in client.get_metric_history(run_id, key)],
        )
        for run in children
    ]


@dataclass
class StageRun:
    """One MLflow run (the parent, or a nested stage) addressed by id."""

    client: MlflowClient
    run_id: str

    @classmethod
    def at(cls, uri: str, run_id: str) -> StageRun:
        """The run ``run_id`` of the tracking server at ``uri`` (a launched process's own client)."""
        return cls(MlflowClient(uri), run_id)

    def log_params(self, params: dict[str, Any]) -> None:
        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def set_tags(self, tags: dict[str, Any]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_metrics(self, values: dict[str, Any], step: int = 0, prefix: str = "") -> None:
        now = _now_ms()
        metrics = [Metric(f"{prefix}{k}", v, now, step) for k, v in _finite_metrics(values).items()]
        for start in range(0, len(metrics), _BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[start : start + _BATCH])

    def log_history(self, history: list[dict], step_key: str, prefix: str = "") -> None:
        """Every numeric entry of every history row, at step = row[step_key]."""
        now = _now_ms()
        metrics = [
            Metric(f"{prefix}{k}", v, now, int(row[step_key]))
            for row in history
            for k, v in _finite_metrics(row).items()
            if k != step_key
        ]
        for start in range(0, len(metrics), _BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[start : start + _BATCH])

    def log_dict(self, value: dict | list, artifact_file: str) -> None:
        self.client.log_dict(self.run_id, value, artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_table(self, rows: list[dict], artifact_file: str) -> None:
        if rows:
            columns = list(rows[0])
            self.client.log_table(self.run_id, {c: [r.get(c) for r in rows] for c in columns}, artifact_file)

    def log_figure(self, figure, artifact_file: str) -> None:
        try:
            self.client.log_figure(self.run_id, figure, artifact_file)
        finally:
            plots.close(figure)

    def log_artifacts(self, local_dir: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(self.run_id, str(local_dir), artifact_path)

    def log_data_input(self, data: DataInput, context: str = "training") -> None:
        """The data version this run read, as its ``mlflow.data`` input (``context``: training, evaluation)."""
        tags = [InputTag(MLFLOW_DATASET_CONTEXT, context)]
        self.client.log_inputs(self.run_id, datasets=[DatasetInput(data.entity(), tags)])

    def log_policy(
        self,
        model,
        tokenizer,
        name: str,
        generation_config: GenerationConfig,
        metadata: dict[str, Any] | None = None,
    ) -> str:
        """A causal LM as an MLflow transformers model (``mlflow.transformers.load_model`` loads it); returns its URI.

        The logged model decodes with ``generation_config`` (its ``model/generation_config.json``), whatever the
        model object carries; ``metadata`` goes to its MLmodel file. ``model`` itself is left as it was.
        Logged once per run: the URI is kept as a run tag, so a retried call returns it.
        """
        tag = f"logged_model.{name}"
        logged = self.client.get_run(self.run_id).data.tags.get(tag)
        if logged:
            return logged
        own = model.generation_config
        # a copy: building the pipeline may write to the config it finds on the model
        model.generation_config = copy.deepcopy(generation_config)
        try:
            with mlflow.start_run(run_id=self.run_id, nested=True), _hub_lookups_quiet():
                info = mlflow.transformers.log_model(
                    transformers_model={"model": model, "tokenizer": tokenizer},
                    name=name,
                    task="text-generation",
                    pip_requirements=list(POLICY_REQUIREMENTS),
                    metadata=metadata,
                )
        finally:
            model.generation_config = own
        self.client.set_tag(self.run_id, tag, info.model_uri)
        return info.model_uri

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status)


@contextlib.contextmanager
def _hub_lookups_quiet():
    """mlflow.transformers looks a saved model's card and licence up on the Hugging Face Hub by its name, which here
    is always a local directory: its warnings that the lookup failed say nothing about the model."""
    logger = logging.getLogger("mlflow.transformers")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _now_ms() -> int:
    return int(time.time() * 1000)


class TrackingUnavailable(RuntimeError):
    """The tracking server does not answer: raised before any work, naming the URI."""


def check_reachable(uri: str, timeout: float) -> None:
    """A tracking server must answer its health check now, not after MLflow's minutes of retries."""
    if not uri.startswith(("http://", "https://")):
        return
    import requests

    try:
        response = requests.get(f"{uri.rstrip('/')}/health", timeout=timeout)
        response.raise_for_status()
    except requests.exceptions.RequestException as error:
        raise TrackingUnavailable(
            f"the MLflow tracking server at {uri} is unreachable ({type(error).__name__}); nothing was run. "
            "Start it (infra/mlflow_server.sh) or point tracking.uri / MLFLOW_TRACKING_URI at a running one"
        ) from None


class Tracker:
    """The pipeline's view of MLflow: one experiment, a parent run per pipeline run, nested stage runs."""

    def __init__(self, cfg: TrackingConfig, root: str | Path):
        self.cfg = cfg
        self.uri = resolve_uri(cfg, root)
        check_reachable(self.uri, cfg.connect_timeout_seconds)
        mlflow.set_tracking_uri(self.uri)
        self.client = MlflowClient(self.uri)
        self.experiment_id = self._experiment_id(root)

    def _experiment_id(self, root: str | Path) -> str:
        """The pipeline's experiment, created on first use (another run may be creating it this moment)."""
        experiment = self.client.get_experiment_by_name(self.cfg.experiment)
        if experiment is not None:
            return experiment.experiment_id
        artifact_location = None
        if self.uri == local_store_uri(root):
            artifact_location = (Path(root) / STORE_DIR / "artifacts").resolve().as_uri()
        try:
            return self.client.create_experiment(self.cfg.experiment, artifact_location=artifact_location)
        except mlflow.exceptions.MlflowException as error:
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            return self.client.get_experiment_by_name(self.cfg.experiment).experiment_id

    def start_run(self, name: str, tags: dict[str, Any] | None = None, parent: StageRun | None = None) -> StageRun:
        all_tags = {k: str(v) for k, v in (tags or {}).items()}
        if parent is not None:
            all_tags["mlflow.parentRunId"] = parent.run_id
        run = self.client.create_run(self.experiment_id, run_name=name, tags=all_tags)
        return StageRun(self.client, run.info.run_id)

    def fail_if_running(self, parent_run_id: str, reason: str) -> None:
        """Mark a pipeline run and its stage runs FAILED where MLflow still has them RUNNING (their
        process died without closing them)."""
        parent = self.client.get_run(parent_run_id)
        children = self.client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'")
        for run in (parent, *children):
            if run.info.status == "RUNNING":
                self.client.set_tag(run.info.run_id, "error", reason[:5000])
                self.client.set_terminated(run.info.run_id, "FAILED")

    # --- registry ---------------------------------------------------------------------

    def register(self, model_uri: str, run: StageRun, tags: dict[str, Any]) -> str:
        """A new version of the registered policy, tagged; returns the version number.

        Idempotent per run: a retry after a tracking-server hiccup finds the version this run
        already registered instead of adding a second one.
        """
        name = self.cfg.registered_model
        for existing in self.client.search_model_versions(f"name = '{name}'"):
            if existing.run_id == run.run_id:
                return str(existing.version)
        self.ensure_registered_model()
        # as mlflow.register_model does for a logged model's models:/m-... URI (the store resolves it), without its
        # "already exists" line on stderr: the registered model always exists here
        model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
        version = self.client.create_model_version(
            name, model_uri, tags={k: str(v) for k, v in tags.items()}, model_id=model_id
        )
        return str(version.version)

    def ensure_registered_model(self) -> None:
        """Create the registered model unless it exists (another run may be creating it this moment)."""
        try:
            self.client.create_registered_model(
                self.cfg.registered_model,
                description=(
                    "PPO policies of the RLHF pipeline; "
                    "`champion` = the best-gated version the gate promoted on the newest data"
                ),
            )
        except mlflow.exceptions.MlflowException as error:
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise

    def record_decision(self, version: str, decision: str, reasons: Iterable[str], score: float | None) -> str:
        """Tag the version with the gate's decision, then move the aliases: last, after everything else.

        Runs that finish at the same time move the aliases one at a time (a lock per store and model
        on this machine): `challenger` goes to the newest decided version, `champion` to a promoted
        version unless the champion outranks it (same data: a higher gate score; other data: a
        newer version). Returns why the champion is what it is.
        """
        name = self.cfg.registered_model
        self.client.set_model_version_tag(name, version, "gate.decision", decision)
        self.client.set_model_version_tag(name, version, "gate.reasons", "\n".join(reasons)[:5000])
        if score is not None:
            self.client.set_model_version_tag(name, version, "gate.score", f"{score:.6f}")
        with locks.exclusive(locks.machine_lock_path(self.uri, name)):
            challenger = self.alias_version(CHALLENGER)
            if challenger is None or int(challenger) < int(version):
                self.client.set_registered_model_alias(name, CHALLENGER, version)
            if decision != "promote":
                return f"not promoted; champion stays {self.alias_version(CHAMPION) or 'unset'}"
            champion = self.alias_version(CHAMPION)
            held = self._better_gated(champion, version) if champion else None
            if held:
                why = f"version {champion} stays champion: {held}"
            else:
                self.client.set_registered_model_alias(name, CHAMPION, version)
                why = f"version {version} is champion"
        self.client.set_model_version_tag(name, version, "gate.champion", why)
        return why

    def _better_gated(self, champion: str, candidate: str) -> str | None:
        """Why ``champion`` outranks ``candidate``, or None: on the same data the higher gate score
        wins; otherwise (scores not comparable) the newer version does."""
        name = self.cfg.registered_model
        held, new = (self.client.get_model_version(name, v).tags for v in (champion, candidate))
        if held.get("data.md5") == new.get("data.md5") and "gate.score" in held and "gate.score" in new:
            if float(held["gate.score"]) > float(new["gate.score"]):
                return f"gate score {float(held['gate.score']):.3f} > {float(new['gate.score']):.3f} on the same data"
            return None
        if int(champion) > int(candidate):
            return "it is the newer version and was gated on other data"
        return None

    def alias_version(self, alias: str) -> str | None:
        """The version ``alias`` points at; None only when the model or the alias does not exist. Any other error
        (a server's 5xx, SQLite's "database is locked") is raised: read as "no champion", it would let a run move
        `champion` past a better version."""
        try:
            aliases = self.client.get_registered_model(self.cfg.registered_model).aliases
        except mlflow.exceptions.MlflowException as error:
            if error.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise
        version = aliases.get(alias)
        return None if version is None else str(version)
