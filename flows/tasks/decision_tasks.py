"""The tasks that decide: evaluation on held-out prompts, the gate, the registry version and its aliases, the
flow run's report."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from transformers import GenerationConfig, PreTrainedTokenizerBase

from components.adapters import plots
from components.adapters.tracking import CHALLENGER, CHAMPION, flatten, transient_error
from components.config import Config
from components.evaluation import pairwise, token_sensitivity
from components.evaluation.evaluation_report import EvaluationReport
from components.evaluation.five_reasons import FiveReasons, as_records, five_reasons, format_reasons
from components.evaluation.gate import Decision, decide_report
from components.evaluation.judges import judge_facts, make_judge
from components.evaluation.overoptimisation import shipped_iteration
from components.evaluation.policy_eval import Responses
from components.evaluation.report import (
    ComparisonTerms,
    EvaluatedModels,
    decoding_modes,
    evaluate_policies,
    format_budgets,
    format_table,
)
from components.models.decoding import Decoder
from components.models.generation import sampling_config
from components.models.runtime import SINGLE
from components.models.stage_store import StageStore
from components.training import recipe
from flows.execution import runtimes, stage_launch
from flows.execution.handoff import task
from flows.execution.run_context import PreparedData, RegistryEntry, RunContext, Trained
from flows.execution.run_tracking import Tracking
from flows.execution.stage_runs import recorded, stage_home
from flows.labelling import human_judging
from flows.tasks import decoding_reuse

EXAMPLE_ROWS_PER_POLICY = 4  # rows of each policy in a mode's examples artefact


def transient(task, task_run, state) -> bool:
    """Retry only what a tracking-server hiccup causes: network and server errors, not our own bugs."""
    try:
        state.result()
    except BaseException as error:
        return transient_error(error)
    return False


def mlflow_links(tracking: Tracking, registry: RegistryEntry) -> dict[str, str]:
    """Where to look: UI links when the store is a server, else the store and ids."""
    uri, run_id, experiment = tracking.tracker.uri, tracking.parent.run_id, tracking.tracker.experiment_id
    if uri.startswith("http"):
        return {
            "pipeline run": f"{uri}/#/experiments/{experiment}/runs/{run_id}",
            "model version": f"{uri}/#/models/{registry.name}/versions/{registry.version}",
        }
    return {
        "tracking store": uri,
        "pipeline run": run_id,
        "model version": f"models:/{registry.name}/{registry.version}",
    }


@task(name="report", cache_policy=NO_CACHE, retry_condition_fn=transient)
def report(
    ctx: RunContext,
    trained: Trained,
    evaluation: EvaluationReport,
    decision: Decision,
    registry: RegistryEntry,
    why: FiveReasons | None = None,
) -> str:
    """The flow run's report: evaluation table, decision with reasons, links; and a metrics table."""
    cfg = ctx.cfg
    links = mlflow_links(ctx.tracking, registry)
    judge = judge_facts(cfg.evaluation.judge)
    stage_times = {name: r.seconds for name, r in trained.models().items()}
    markdown = "\n".join(
        [
            f"# RLHF pipeline: {decision.label.upper()}",
            f"profile `{cfg.profile}`, seed {cfg.seed}, data `{ctx.data.md5}`, RL algorithm `{cfg.rl.algorithm}` "
            "(the policy named ppo below)",
            "",
            "## Evaluation",
            f"judge: {judge['kind']} `{judge['name']}`",
            "```",
            format_table(evaluation, judge["label"]).strip(),
            "```",
            "",
            "## What each policy used",
            "```",
            format_budgets(comparison_terms(ctx, trained)).strip(),
            "```",
            "",
            "## Gate",
            "```",
            decision.summary(),
            "```",
            "",
            *(["## Five reasons", "```", format_reasons(why.reasons), "```", ""] if why else []),
            "## Registry",
            f"`{registry.name}` version {registry.version} ({registry.decision}); "
            f"champion = {registry.champion or 'none'}, challenger = {registry.challenger}",
            "",
            "## MLflow",
            *(f"- {k}: {v}" for k, v in links.items()),
            "",
            "## Stage seconds (0 = reused)",
            *(f"- {k}: {v:.1f}" for k, v in stage_times.items()),
        ]
    )
    create_markdown_artifact(
        key="pipeline-report", markdown=markdown, description="evaluation, gate decision and where the runs are"
    )
    rows = []
    for mode, block in evaluation.modes.items():
        for name, summary in block.policies.items():
            win, gold = block.ppo_win_rate.get(name), summary.get("gold")
            rows.append(
                {
                    "mode": mode,
                    "policy": name,
                    "gold": round(gold["value"], 4) if gold else None,
                    "gold_ci": f"[{gold['ci'][0]:.3f}, {gold['ci'][1]:.3f}]" if gold else None,
                    "rm": round(summary["rm"]["value"], 4),
                    "kl": round(summary["kl"], 4) if "kl" in summary else None,
                    "ppo_win_rate": round(win["value"], 4) if win else None,
                    "ppo_win_rate_ci": f"[{win['ci'][0]:.3f}, {win['ci'][1]:.3f}]" if win else None,
                    "ppo_win_rate_ties": round(win["ties"], 4) if win and "ties" in win else None,
                }
            )
    create_table_artifact(key="pipeline-metrics", table=rows, description="every policy under every decoding mode")
    return markdown


def report_with_retries(ctx: RunContext, *args) -> str:
    orchestration = ctx.cfg.orchestration
    retrying = report.with_options(
        retries=orchestration.tracking_retries, retry_delay_seconds=orchestration.tracking_retry_delays
    )
    return retrying(ctx, *args)


def register_with_retries(ctx: RunContext, *args) -> RegistryEntry:
    orchestration = ctx.cfg.orchestration
    retrying = register.with_options(
        retries=orchestration.tracking_retries, retry_delay_seconds=orchestration.tracking_retry_delays
    )
    return retrying(ctx, *args)


@task(name="evaluate", cache_policy=NO_CACHE)
def run_judge(ctx: RunContext, trained: Trained):
    """The run's judge (None: people), made and refused before anything is judged; never the RM PPO optimised."""
    cfg = ctx.cfg
    optimised = [StageStore(ctx.root).path(stage_home(cfg, "reward_model"), trained.reward_model.key)]
    gold = ctx.environment.gold if ctx.environment is not None else None
    return make_judge(
        cfg.evaluation.judge, cfg.model, gold, optimised, runtimes.flow_device(cfg), cfg.timeouts.judge_call_seconds
    )


def evaluate(ctx: RunContext, trained: Trained) -> EvaluationReport:
    cfg = ctx.cfg
    judge = run_judge(ctx, trained)
    facts = judge_facts(cfg.evaluation.judge)
    pairs: list[pairwise.Pair] = []  # for people, who judge PPO against each policy pair by pair
    round_id = human_judging.round_id(ctx, trained)

    def pair_up(mode, responses) -> None:
        texts = {name: out.texts for name, out in responses.items()}
        pairs.extend(
            pairwise.blinded_pairs(
                round_id,
                mode.name,
                responses["ppo"].prompts,
                texts,
                cfg.evaluation.judge.pairs_per_baseline,
                mode.samples_per_prompt,
                cfg.seed,
            )
        )

    reused: list[str] = []  # the decodings an earlier run made with everything they depend on unchanged
    with recorded(ctx.tracking.stage("evaluation")) as run:
        run.set_tags({"judge.kind": facts["kind"], "judge.name": facts["name"]})
        policies = {"sft": trained.sft.model, **{n: r.model for n, r in trained.baselines.items()}}
        policies["ppo"] = trained.ppo.model
        profile = runtimes.run_profile(cfg)
        in_process = runtimes.runs_in_process(cfg, profile)
        # launched: one launch decodes what no earlier decoding stands in for; the judge reads them here
        decoded = None if in_process else launched_decodings(ctx, trained, run)
        with runtimes.in_process(cfg, profile.use_cpu) if in_process else contextlib.nullcontext(SINGLE) as runtime:
            report = evaluate_policies(
                EvaluatedModels(policies, trained.reward_model.model),
                ctx.data.eval_prompts,
                cfg.evaluation,
                Decoder(ctx.tokenizer, cfg.model, cfg.seed, runtime),
                judge,
                cfg.baselines.best_of_n,
                on_responses=pair_up if judge is None else None,
                recall=decoding_reuse.remembered(ctx, trained, reused, decoded),
            )
        run.set_tags({"evaluation.reused": ", ".join(reused) or "none"})
        run.log_params(flatten(cfg.evaluation.model_dump(mode="json")))
        for mode, block in report.modes.items():
            for name, summary in block.policies.items():
                run.log_metrics(flatten(summary), prefix=f"{mode}.{name}.")
            for name, win in block.ppo_win_rate.items():
                run.log_metrics(
                    {"value": win["value"], "ci_lo": win["ci"][0], "ci_hi": win["ci"][1], "ties": win["ties"]},
                    prefix=f"{mode}.ppo_win_rate.{name}.",
                )
            if block.ppo_win_rate:
                run.log_figure(plots.win_rates(block.as_record(), mode), f"plots/win_rates_{mode}.png")
            run.log_table(block.examples, f"tables/examples_{mode}.json")
            create_table_artifact(
                key=f"examples-{mode}",
                table=block.examples[: EXAMPLE_ROWS_PER_POLICY * len(block.policies)],
                description=f"example responses, {mode} decoding",
            )
        run.log_dict(report.as_record(), "evaluation.json")
        run.log_dict(comparison_terms(ctx, trained).as_record(), "budgets.json")
        create_markdown_artifact(key="evaluation", markdown=f"```\n{format_table(report, facts['label'])}\n```")
        if judge is None:
            human_judging.export(ctx, run, pairs)
    return report


def launched_decodings(ctx: RunContext, trained: Trained, run) -> dict[tuple[str, str], Responses]:
    """Every held-out decoding the evaluation needs and no earlier one stands in for, in one launch of the run's
    profile: {(policy, mode name): responses}; where it ran is tagged on the evaluation's ``run``."""
    wanted = decoding_reuse.to_decode(ctx, trained)
    if not wanted:
        return {}
    models = {"sft": trained.sft, "reward_model": trained.reward_model, "ppo": trained.ppo, **trained.baselines}
    needed = {"sft", "reward_model"} | {policy for policy, _ in wanted if policy in models}
    args = {"eval_prompts": ctx.data.eval_prompts, "wanted": [list(pair) for pair in wanted]}
    result = stage_launch.run_stage(ctx, "decode", args, {name: models[name] for name in sorted(needed)})
    run.set_tags({f"runtime.{key}": value for key, value in result.placement.items()})
    run.log_metrics({"decode_seconds": result.seconds})
    return {tuple(name.split("/")): Responses(**responses) for name, responses in result.model.items()}


@task(name="five reasons", cache_policy=NO_CACHE)
def reasons(ctx: RunContext, trained: Trained, evaluation: EvaluationReport) -> FiveReasons:
    """Each of the five reasons for RL over SL mapped to this run's measurements, with its verdict; reason 3's own
    measurement (one-token edits of SFT's answers) made here, where an automatic judge scores them."""
    cfg = ctx.cfg
    sensitivity = None
    with recorded(ctx.tracking.stage("five_reasons")) as run:
        judge = run_judge(ctx, trained) if cfg.evaluation.token_sensitivity.prompts else None
        if judge is not None:
            with runtimes.in_process(cfg, runtimes.run_profile(cfg).use_cpu) as runtime:
                pairs = token_sensitivity.edited_pairs(
                    trained.sft.model,
                    trained.reward_model.model,
                    ctx.data.eval_prompts,
                    judge,
                    cfg.evaluation.token_sensitivity,
                    Decoder(ctx.tokenizer, cfg.model, cfg.seed, runtime),
                )
            sensitivity = {"edits": cfg.evaluation.token_sensitivity.edits, **token_sensitivity.summarise(pairs)}
            run.log_dict(sensitivity, "token_sensitivity.json")
            if pairs:
                run.log_figure(plots.token_sensitivity(pairs), "plots/token_sensitivity.png")
        found = five_reasons(
            evaluation,
            trained.reward_model.metrics.get("valid_accuracy"),
            sensitivity,
            rl=cfg.rl.algorithm,
            turns=cfg.data.synthetic.turns if cfg.data.source == "synthetic" else 1,
        )
        run.log_dict(as_records(found), "five_reasons.json")
        run.set_tags({f"reason.{reason.number}": reason.verdict for reason in found})
        create_markdown_artifact(key="five-reasons", markdown=f"```\n{format_reasons(found)}\n```")
    return FiveReasons(sensitivity, found)


@task(name="gate", cache_policy=NO_CACHE)
def gate(ctx: RunContext, trained: Trained, evaluation: EvaluationReport) -> Decision:
    cfg, tracking = ctx.cfg, ctx.tracking
    stage_metrics = trained.metrics()
    report = {
        "judge": judge_facts(cfg.evaluation.judge),
        "data_validation": {
            "success": ctx.data.validation.success,
            "eval_prompts_in_training": eval_prompts_in_training(ctx.data, trained),
        },
        "non_finite_stages": sorted(name for name, metrics in stage_metrics.items() if _has_non_finite(metrics)),
        "reward_model": {
            key: trained.reward_model.metrics.get(name)
            for key, name in (
                ("accuracy", "valid_accuracy"),
                ("ensemble_size", "ensemble_size"),
                ("member_agreement", "member_agreement"),
            )
        },
        "ppo_history": trained.ppo.history,
        "ppo_shipped_iteration": shipped_iteration(
            trained.ppo.history, int(trained.ppo.metrics.get("selection.chosen_iteration", -1))
        ),
        "modes": evaluation.as_record(),
    }
    decision = decide_report(report, cfg.gate)  # a malformed report is a rejection that says why
    with recorded(tracking.stage("gate")) as run:
        run.log_params(flatten(cfg.gate.model_dump(mode="json")))
        run.log_dict(decision.as_dict(), "gate/decision.json")
        run.set_tags({"gate.decision": decision.label})
        run.log_metrics(
            {
                "promote": float(decision.promote),
                "failed_rules": float(len(decision.failures)),
                **({"score": decision.score} if decision.score is not None else {}),
            }
        )
    tracking.parent.set_tags({"gate.decision": decision.label})
    create_markdown_artifact(key="gate", markdown=f"```\n{decision.summary()}\n```")
    get_run_logger().info(decision.summary())
    return decision


def eval_prompts_in_training(data: PreparedData, trained: Trained) -> int:
    """Held-out prompts among the prompts of the demonstrations and the comparisons (validation refuses such data;
    the gate counts again, on what the stages actually trained on)."""
    trained_on = set(data.train_prompts) | {r["prompt"] for r in trained.comparisons.model}
    return len(set(data.eval_prompts) & trained_on)


def _has_non_finite(metrics: dict) -> bool:
    return any(isinstance(v, float) and not math.isfinite(v) for v in metrics.values())


@task(name="register", cache_policy=NO_CACHE, retry_condition_fn=transient)
def register(ctx: RunContext, trained: Trained, decision: Decision) -> RegistryEntry:
    """The PPO policy becomes a new registry version, tagged; the aliases move last."""
    cfg, tracking = ctx.cfg, ctx.tracking
    run = tracking.parent
    generation_config, decoding = gate_decoding(cfg, ctx.tokenizer)
    model_uri = run.log_policy(trained.ppo.model, ctx.tokenizer, "policy", generation_config, {"decoding": decoding})
    evaluation_tags = {f"gate.{r.mode}.{r.rule}" if r.mode else f"gate.{r.rule}": r.detail for r in decision.reasons}
    version = tracking.tracker.register(
        model_uri,
        run,
        {
            "data.md5": ctx.data.md5,
            "profile": cfg.profile,
            "seed": cfg.seed,
            "decoding.shipped": decoding["shipped"],
            **{
                f"decoding.{mode}": json.dumps(settings, sort_keys=True) for mode, settings in decoding["modes"].items()
            },
            **{k.replace(" ", "_"): v[:5000] for k, v in evaluation_tags.items()},
        },
    )
    champion_note = tracking.tracker.record_decision(
        version, decision.label, [str(r) for r in decision.reasons], decision.score
    )
    get_run_logger().info("registry: %s", champion_note)
    return RegistryEntry(
        name=cfg.tracking.registered_model,
        version=version,
        decision=decision.label,
        model_uri=model_uri,
        champion=tracking.tracker.alias_version(CHAMPION),
        challenger=tracking.tracker.alias_version(CHALLENGER),
        champion_note=champion_note,
    )


def gate_decoding(cfg: Config, tokenizer: PreTrainedTokenizerBase) -> tuple[GenerationConfig, dict]:
    """How the gate decoded the policy it judged. Returns the generation config the registered policy ships with
    (sampling at the evaluation temperature when the gate judged samples, else greedy) and the record of it:
    ``{"shipped": mode, "modes": {mode: settings}}`` for every mode the gate judged, so each can be reproduced
    (``GenerationConfig(**settings["generation_config"])``)."""

    def config(temperature: float, greedy: bool) -> GenerationConfig:
        return sampling_config(
            cfg.model.max_response_tokens, tokenizer.eos_token_id, tokenizer.pad_token_id, temperature, greedy
        )

    shipped = "sample" if "sample" in cfg.gate.modes else "greedy"
    modes = {
        mode.name: {
            "samples_per_prompt": mode.samples_per_prompt,
            "max_prompt_tokens": cfg.model.max_prompt_tokens,  # longer prompts were cut from the left
            "seed": cfg.seed,
            "generation_config": config(mode.temperature, mode.greedy).to_diff_dict(),
        }
        for mode in decoding_modes(cfg.evaluation)
        if mode.name in cfg.gate.modes
    }
    return config(cfg.evaluation.temperature, shipped == "greedy"), {"shipped": shipped, "modes": modes}


def tuning_budgets(cfg: Config) -> dict[str, int]:
    """Configurations each policy's settings were chosen from on these data: the sweeps (benchmarks/tune.py) ran on
    the embedded task, so on a user's files every method's count is 0."""
    here = cfg.data.source == "synthetic"
    tuned = {name: cfg.tuning.configurations_per_method * here for name in ("ppo", *recipe.SUPERVISED_BASELINES)}
    tuned["ppo"] += cfg.tuning.ppo_length_configurations * here
    return {"sft": 0, "best_of_n": 0, **tuned}


def comparison_terms(ctx: RunContext, trained: Trained) -> ComparisonTerms:
    """What makes the comparison fair, for the record: one SFT start and one set of held-out prompts for every
    policy, and each policy's label budget (validation slices and selection labels included) and tuning budget."""
    cfg = ctx.cfg
    eval_prompts = sorted(ctx.data.eval_prompts)
    return ComparisonTerms(
        sft_start=trained.sft.key,
        eval_prompt_count=len(eval_prompts),
        eval_prompts_md5=hashlib.md5("\n".join(eval_prompts).encode()).hexdigest(),
        label_budgets=recipe.label_budgets(cfg, trained.comparisons.model, trained.metrics(), trained.own_comparisons),
        tuning_budgets=tuning_budgets(cfg),
        tuning=cfg.tuning.model_dump(mode="json"),
        tuned_on_these_data=cfg.data.source == "synthetic",
    )
