"""Figures for the run record: training curves, PPO curves, win rates with CIs, over-optimisation.

Each function takes plain data (histories, the evaluation report) and returns a matplotlib Figure;
the MLflow adapter logs them as PNG. The non-interactive Agg backend is used: no display needed.
"""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
from matplotlib.figure import Figure  # noqa: E402


def curves(history: list[dict], keys: list[str], x: str = "step", title: str = "") -> Figure:
    """One panel per key that the history has, against ``x``."""
    keys = [k for k in keys if any(k in h for h in history)]
    fig, axes = plt.subplots(1, max(1, len(keys)), figsize=(4 * max(1, len(keys)), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        points = [(h[x], h[key]) for h in history if key in h and x in h]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="." if len(points) < 40 else None)
        ax.set_xlabel(x)
        ax.set_title(key)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def ppo_curves(history: list[dict]) -> Figure:
    return curves(history, ["rm_score", "gold", "kl", "entropy", "response_length"], x="iteration", title="PPO: reward, gold and KL per iteration")


def win_rates(mode_report: dict, mode: str, judge: str = "ppo_win_rate") -> Figure:
    """PPO's paired win rate against each policy, with its CI and the 50% line."""
    rates = mode_report[judge]
    names = list(rates)
    values = [rates[n]["value"] for n in names]
    # a win rate of 0 or 1 sits a rounding error outside its own interval: error bars are never negative
    lower = [max(0.0, rates[n]["value"] - rates[n]["ci"][0]) for n in names]
    upper = [max(0.0, rates[n]["ci"][1] - rates[n]["value"]) for n in names]
    fig, ax = plt.subplots(figsize=(1.3 * len(names) + 2, 3.2))
    ax.bar(names, values, yerr=[lower, upper], capsize=4, color="tab:blue")
    ax.axhline(0.5, color="black", linestyle="--", linewidth=1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("PPO win rate (95% CI)")
    ax.set_title(f"PPO vs each policy, {mode} decoding ({'gold' if judge == 'ppo_win_rate' else 'reward model'})")
    fig.tight_layout()
    return fig


def overoptimisation(history: list[dict]) -> Figure:
    """Gold score and RM (proxy) score of the PPO rollouts against their KL from the reference (Gao et al. 2022)."""
    points = [h for h in history if "gold" in h]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    kl = [h["kl"] for h in points]
    ax.plot(kl, [h["rm_score"] for h in points], label="reward model (proxy)", color="tab:orange")
    ax.plot(kl, [h["gold"] for h in points], label="gold judge", color="tab:green")
    ax.set_xlabel("KL(policy || SFT) per response, nats")
    ax.set_ylabel("score")
    ax.set_title("Over-optimisation view")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def close(fig: Figure) -> None:
    plt.close(fig)
