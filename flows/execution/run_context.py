"""What the flow's tasks hand each other, typed: the run's context, the validated data and the trained stages."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from transformers import PreTrainedTokenizerBase

from components.config import Config
from components.data.dataset import DataSummary
from components.data.environment import Environment
from components.data.files import DEMONSTRATIONS, EVAL_PROMPTS, PREFERENCES
from components.training.recipe import StageResult
from flows.execution.run_tracking import Tracking


@dataclass(frozen=True)
class ValidationSummary:
    """What Great Expectations said of the data this run read."""

    success: bool
    data_docs: str | None  # Data Docs' index page
    rows: dict[str, int]  # rows per data set
    reused: bool  # the same files passed the same suites before: not run again

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PreparedData:
    """The validated, versioned data set as the run read it."""

    rows: dict[str, list[dict]]  # demonstrations, preferences, eval_prompts
    version: dict  # data.dvc's md5 and what this run did to it (components.adapters.versioning)
    validation: ValidationSummary
    prepared: dict[str, int]  # rows per training input
    summary: DataSummary  # row counts and, for the embedded task, its description

    @property
    def md5(self) -> str:
        return self.version["md5"]

    @property
    def demonstrations(self) -> list[dict]:
        return self.rows[DEMONSTRATIONS]

    @property
    def preferences(self) -> list[dict]:
        return self.rows[PREFERENCES]

    @property
    def eval_prompts(self) -> list[str]:
        return [r["prompt"] for r in self.rows[EVAL_PROMPTS]]

    @property
    def train_prompts(self) -> list[str]:
        """The distinct prompts of the demonstrations, sorted: what comparison collection and PPO draw from."""
        return sorted({r["prompt"] for r in self.demonstrations})


@dataclass(frozen=True)
class RunContext:
    """What every training task reads: the config, the project root, the MLflow session, the data, the tokenizer
    and the preference task (None for user files)."""

    cfg: Config
    root: str
    tracking: Tracking
    data: PreparedData
    tokenizer: PreTrainedTokenizerBase
    environment: Environment | None = None
    vocabulary: frozenset[str] | None = None  # the word tokenizer's, for a model trained from scratch
    round_index: int | None = None  # the labelling round a task belongs to (1-based); None: a single round

    @property
    def last_round(self) -> bool:
        """Whether this is the round whose policies ship (the only one without labelling rounds)."""
        return self.round_index is None or self.round_index == self.cfg.comparisons.rounds


@dataclass
class Trained:
    """The trained stages of one run; ``models`` names those that save a model by their directory under
    ``artifacts_dir``."""

    sft: StageResult
    comparisons: StageResult  # its ``model`` is the comparison rows
    reward_model: StageResult
    ppo: StageResult
    baselines: dict[str, StageResult] = field(default_factory=dict)
    rounds: list[dict[str, StageResult]] = field(default_factory=list)  # what each labelling round made
    own_comparisons: dict[str, list[dict]] = field(default_factory=dict)  # a policy trained on labels of its own

    def models(self) -> dict[str, StageResult]:
        return {"sft": self.sft, "reward_model": self.reward_model, "ppo": self.ppo, **self.baselines}

    def metrics(self) -> dict[str, dict]:
        return {name: result.metrics for name, result in self.models().items()}


@dataclass(frozen=True)
class RegistryEntry:
    """The registry version a run made of its policy, and where the aliases stand after it."""

    name: str
    version: str
    decision: str  # the gate's: promote | reject
    model_uri: str
    champion: str | None
    challenger: str | None
    champion_note: str

    def as_dict(self) -> dict:
        return asdict(self)
