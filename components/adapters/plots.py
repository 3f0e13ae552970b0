"""Figures for the run record: training curves, PPO curves, win rates with CIs, over-optimisation.

Each function takes plain data (histories, the evaluation report) and returns a matplotlib Figure;
the MLflow adapter logs them as PNG. The non-interactive Agg backend is used: no display needed.
"""

from __future__ import annotations

import statistics

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure


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
    return curves(
        history,
        ["rm_score", "gold", "kl", "entropy", "response_length"],
        x="iteration",
        title="PPO: reward, gold and KL per iteration",
    )


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


def overoptimisation(history: list[dict], fit: dict, shipped_iteration: int | None = None) -> Figure:
    """Gao et al. (2022)'s view: gold and proxy (RM) score of the PPO rollouts against sqrt(KL), as points coloured
    by iteration (KL goes up and down, so lines through the iterations in order would tangle), the fitted
    R(d) = d (alpha - beta log d) of each over them, the gold curve's peak and the shipped checkpoint marked.

    ``fit`` is ``overoptimisation_fit(history)``: scores are drawn as changes from the first iteration."""
    points = [h for h in history if "gold" in h and "rm_score" in h]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    if not points:
        ax.text(0.5, 0.5, "no gold monitor points", ha="center", va="center", transform=ax.transAxes)
        fig.tight_layout()
        return fig
    start = fit["start"]
    d = [max(h["kl"], 0.0) ** 0.5 for h in points]
    iterations = [h["iteration"] for h in points]
    gold = ax.scatter(
        d,
        [h["gold"] - start["gold"] for h in points],
        c=iterations,
        cmap="viridis",
        marker="o",
        s=18,
        label="gold (judge)",
    )
    ax.scatter(
        d,
        [h["rm_score"] - start["proxy"] for h in points],
        c=iterations,
        cmap="viridis",
        marker="^",
        s=18,
        label="proxy (reward model)",
    )
    grid = [max(d) * i / 200 for i in range(1, 201)]
    for name, style, colour in (("gold", "-", "tab:green"), ("proxy", "--", "tab:orange")):
        curve = fit.get(name)
        if curve is not None:
            ax.plot(
                grid,
                [curve(x) for x in grid],
                style,
                color=colour,
                label=f"{name} fit: d({curve.alpha:.2f} - {curve.beta:.2f} log d), R2 {curve.r2:.2f}",
            )
    peak = fit.get("gold")
    if peak is not None and peak.peak_d is not None:
        ax.axvline(peak.peak_d, color="tab:green", linestyle=":", linewidth=1)
        ax.plot(
            [peak.peak_d],
            [peak.peak_value],
            marker="*",
            color="tab:green",
            markersize=14,
            linestyle="none",
            label=f"gold peak: KL {peak.peak_kl:.2f}",
        )
    shipped = next((h for h in points if h["iteration"] == shipped_iteration), None)
    if shipped is not None:
        ax.plot(
            [max(shipped["kl"], 0.0) ** 0.5],
            [shipped["gold"] - start["gold"]],
            marker="D",
            markersize=10,
            markerfacecolor="none",
            markeredgecolor="tab:red",
            markeredgewidth=2,
            linestyle="none",
            label=f"shipped: iteration {shipped_iteration + 1}",
        )
    fig.colorbar(gold, ax=ax, label="PPO iteration")
    ax.axhline(0, color="black", linewidth=0.5)
    ax.set_xlabel("sqrt(KL(policy || SFT)), nats^0.5 per response")
    ax.set_ylabel("score change from the SFT policy")
    ax.set_title("Over-optimisation (Gao et al. 2022)")
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def close(fig: Figure) -> None:
    plt.close(fig)


def token_sensitivity(pairs) -> Figure:
    """Seed reason 3: for one-token edits that change the judge's score, the judge's change against the reward model's
    and against SFT's loss (its fall: a lower loss means SFT likes the edit better), each in units of its spread."""

    def changes(values: list[tuple[float, float]]) -> list[float]:
        spread = statistics.pstdev([v[0] for v in values]) or 1.0
        return [(v[1] - v[0]) / spread for v in values]

    gold = changes([p.gold for p in pairs])
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.scatter(gold, changes([p.rm for p in pairs]), s=10, label="reward model score", color="tab:blue")
    ax.scatter(
        gold, [-c for c in changes([p.sft_loss for p in pairs])], s=10, label="SFT loss, falling", color="tab:red"
    )
    ax.axhline(0, color="black", linewidth=0.8)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel("judge's change (its spreads)")
    ax.set_ylabel("change (its spreads)")
    ax.set_title("One-token edits of SFT's answers")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
