"""The report of bench/knowledge_ablation.py: per-variant mean and standard deviation over seeds,
differences with whether they exceed the seed spread, the markdown tables and the PNG."""
from __future__ import annotations

import statistics
from pathlib import Path

METRICS = ["probe_acc_at_1", "probe_mean_rank", "relation_selection_acc_at_1", "relation_selection_lexical_acc_at_1",
           "cluener_f1", "thucnews_acc", "heldout_mlm_loss"]
LOWER_IS_BETTER = {"probe_mean_rank", "heldout_mlm_loss"}
# no-learning baselines shown beside a learned metric (the same for every run): no differences, no panel
BASELINES = {"relation_selection_lexical_acc_at_1": "relation_selection_acc_at_1"}
COMPARED = [m for m in METRICS if m not in BASELINES]


def mean_std(values: list[float]) -> dict:
    return {"mean": round(statistics.fmean(values), 4),
            "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0}


def pretrained_here(run: dict) -> bool:
    """Whether the run's pretraining ran in its own command (else an earlier command's was reused)."""
    if not run["compute"]["steps"]:
        return True
    if "pretrain_reused" in run:
        return not run["pretrain_reused"]
    return run["cpu_seconds"]["pretrain"] > 1  # written before the flag: a reused pretraining took ~0 s


def aggregate(results: list[dict], variants: list[str], pairs: list[tuple[str, str]]) -> dict:
    """Mean ± std of every metric per variant, compute per variant, and each (variant, reference)
    difference in `pairs` with whether it exceeds the seed spread (|Δ| > std + std)."""
    table: dict = {}
    for v in variants:
        runs = [r for r in results if r["variant"] == v]
        timed = [r for r in runs if pretrained_here(r)]
        entry = {m: mean_std([r["metrics"][m] for r in runs]) for m in METRICS if all(m in r["metrics"] for r in runs)}
        entry.update({
            "tokens": round(statistics.fmean(r["compute"]["tokens"] for r in runs)),
            "token_slots": runs[0]["compute"]["token_slots"], "steps": runs[0]["compute"]["steps"],
            "flops": float(f"{statistics.fmean(r['compute']['flops'] for r in runs):.4g}"),
            "tokens_per_kind": runs[0]["compute"]["tokens_per_kind"],
            # a run that found its pretraining done by an earlier command did not time it: means
            # over the runs that trained (timed_runs of them)
            # (None: every pretraining was an earlier command's; its cost is in that command's report)
            "seconds": round(statistics.fmean(r["seconds"]["pretrain"] for r in timed), 1) if timed else None,
            "cpu_seconds": round(statistics.fmean(r["cpu_seconds"]["pretrain"] for r in timed), 1) if timed else None,
            # every stage's cost, a stage an earlier command made counted at what it cost then
            "run_cpu_seconds": round(statistics.fmean(sum(r["cpu_seconds"].values()) for r in timed or runs), 1),
            "timed_runs": len(timed),
            "seeds": [r["seed"] for r in runs]})
        table[v] = entry
    diffs: dict = {}
    for v, ref in pairs:
        for m in COMPARED:
            a, b = table[v][m], table[ref][m]
            delta = a["mean"] - b["mean"]
            diffs.setdefault(f"{v}-{ref}", {})[m] = {
                "delta": round(delta, 4), "exceeds_seed_spread": abs(delta) > a["std"] + b["std"],
                "better": delta < 0 if m in LOWER_IS_BETTER else delta > 0}
    return {"variants": table, "differences": diffs}


def print_tables(summary: dict, names: dict[str, str]) -> None:
    table = summary["variants"]
    print("\n| variant | " + " | ".join(METRICS) + " |")
    print("|---" * (len(METRICS) + 1) + "|")
    for v, e in table.items():
        cells = [f"{e[m]['mean']:.4f} ± {e[m]['std']:.4f}" if m in e else "–" for m in METRICS]
        print(f"| {v} {names[v]} | " + " | ".join(cells) + " |")
    print("\n| variant | steps | token slots | tokens seen | FLOPs | pretrain CPU s | pretrain wall s | whole run CPU s |")
    print("|---" * 8 + "|")
    for v, e in table.items():
        pretrain = (f"{e['cpu_seconds']:.0f} | {e['seconds']:.0f}" if e["cpu_seconds"] is not None
                    else "reused | reused")
        print(f"| {v} | {e['steps']} | {e['token_slots']:,} | {e['tokens']:,} | {e['flops']:.3g} | {pretrain} | "
              f"{e['run_cpu_seconds']:.0f} |")
    print("\n| difference | " + " | ".join(COMPARED) + " |")
    print("|---" * (len(COMPARED) + 1) + "|")
    for name, d in summary["differences"].items():
        cells = [f"{d[m]['delta']:+.4f}{' *' if d[m]['exceeds_seed_spread'] else ''}" for m in COMPARED]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("(* the difference exceeds the seed spread: |Δ| > std + std)")


def plot(summary: dict, results: list[dict], path: Path, names: dict[str, str]) -> None:
    """Held-out MLM loss against tokens seen (mean ± std over seeds), each metric per variant with
    its seed spread as error bars, and the token mix the equal compute bought."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    variants = list(summary["variants"])
    palette = plt.cm.tab10.colors + plt.cm.Dark2.colors  # 18: every variant its own colour
    colors = {v: palette[i % len(palette)] for i, v in enumerate(variants)}
    fig, axes = plt.subplots(2, 4, figsize=(19, 8.5))
    ax = axes[0][0]
    trained = []  # the losses after some training set the scale (R's untrained 9.97 would flatten it)
    for v in variants:
        curves = [r["curve"] for r in results if r["variant"] == v]
        x = np.mean([[p["tokens"] for p in c] for c in curves], axis=0)
        y = np.array([[p["loss"] for p in c] for c in curves])
        label = f"{v} {names[v]}" + (f" ({y.mean():.2f}, off scale)" if len(x) == 1 and v == "R" else "")
        ax.plot(x, y.mean(0), marker="o", ms=3, color=colors[v], label=label)
        ax.fill_between(x, y.mean(0) - y.std(0), y.mean(0) + y.std(0), color=colors[v], alpha=0.2)
        trained += list(y.mean(0)[x > 0]) if v != "F0" else list(y.mean(0))
    if trained:
        lo, hi = min(trained), max(trained)
        ax.set_ylim(lo - 0.1 * (hi - lo + 0.05), hi + 0.1 * (hi - lo + 0.05))
    ax.set(xlabel="tokens seen (F: after the imported BERT's)", ylabel="held-out MLM loss (char masking)",
           title="held-out MLM loss")
    ax.legend(fontsize=7)
    for ax, m in zip(axes.flat[1:], COMPARED):
        means = [summary["variants"][v][m]["mean"] for v in variants]
        stds = [summary["variants"][v][m]["std"] for v in variants]
        ax.bar(variants, means, yerr=stds, capsize=4, color=[colors[v] for v in variants])
        lo, hi = min(a - b for a, b in zip(means, stds)), max(a + b for a, b in zip(means, stds))
        for baseline in (b for b, learned in BASELINES.items() if learned == m):
            level = max(summary["variants"][v].get(baseline, {"mean": 0.0})["mean"] for v in variants)
            ax.axhline(level, color="k", ls=":", lw=1.2, label=f"no-learning rule {level:.3f}")
            ax.legend(fontsize=7, loc="lower right")
            lo, hi = min(lo, level), max(hi, level)
        ax.set_ylim(lo - 0.15 * (hi - lo + 1e-9), hi + 0.15 * (hi - lo + 1e-9))
        ax.set_title(m + (" (lower is better)" if m in LOWER_IS_BETTER else ""))
    ax = axes.flat[len(COMPARED) + 1]
    bottom = np.zeros(len(variants))
    for kind, name in enumerate(["text", "knowledge-masked", "UKTP", "retrieval-augmented"]):
        counts = np.array([summary["variants"][v]["tokens_per_kind"].get(str(kind), 0) for v in variants], float)
        ax.bar(variants, counts, bottom=bottom, label=name)
        bottom += counts
    ax.axhline(max(e["token_slots"] for e in summary["variants"].values()), color="k", ls="--", lw=1,
               label="token slots (equal)")
    ax.set_title("tokens seen per example kind")
    ax.legend(fontsize=7, loc="lower right")
    counts = sorted({len(e["seeds"]) for e in summary["variants"].values()})
    seeds = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    fig.suptitle(f"Knowledge masking ablation at equal compute ({seeds} seed(s) per variant; error bars ±1 std)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
