"""`eval/report.md` and its PNG plots (matplotlib, Agg backend; no ray).

Plots, each written only when its data exists:
- `accuracy.png`: greedy accuracy by model, overall and per subset (near-miss, steps, source);
- `negatives.png`: wrongness x absurdity of the sampled wrong solutions, hard negatives marked;
- `pair_weights.png`: histogram of the DPO pair weights, by pair kind;
- `dpo_margins.png`: DPO reward margin over training steps, per DPO model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from hsdpo.eval.metrics import ERR_DIMS, format_comparison


@dataclass
class ReportInputs:
    """What the report draws besides the summary; each part may be empty."""

    negatives: list[dict[str, Any]] = field(default_factory=list)  # rows: wrongness, absurdity, hard_negative
    pair_weights: list[tuple[float, str]] = field(default_factory=list)  # (weight, kind)
    margins: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # model -> [(step, margin)]
    notes: list[str] = field(default_factory=list)  # extra lines under the table


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def subset_columns(summary: dict[str, Any]) -> list[tuple[str, str, str | None]]:
    """(label, group key, value) of each bar group: overall, near-miss, steps, sources."""
    first = next(iter(summary["models"].values()))
    cols: list[tuple[str, str, str | None]] = [("overall", "overall", None)]
    if "near_miss" in first:
        cols.append(("near-miss", "near_miss", None))
    cols += [(f"{k} step{'s' * (k != '1')}", "by_steps", k) for k in first["by_steps"]]
    if len(first["by_source"]) > 1:
        cols += [(k, "by_source", k) for k in first["by_source"]]
    return cols


def _subset_acc(m: dict[str, Any], group: str, key: str | None) -> float:
    if group == "overall":
        return m["accuracy"]
    node = m[group] if key is None else m[group].get(key, {"accuracy": 0.0})
    return node["accuracy"]


def plot_accuracy(summary: dict[str, Any], path: str) -> None:
    plt = _plt()
    cols = subset_columns(summary)
    names = list(summary["models"])
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(cols) + 2), 4))
    for i, name in enumerate(names):
        m = summary["models"][name]
        xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(cols))]
        ax.bar(xs, [100 * _subset_acc(m, g, k) for _, g, k in cols], width, label=name)
    ax.set_xticks(range(len(cols)), [c[0] for c in cols])
    ax.set_ylabel("greedy accuracy (%)")
    ax.set_ylim(0, 100)
    _save(plt, fig, ax, "held-out accuracy by model and subset", path)


def _save(plt, fig, ax, title: str, path: str) -> None:
    """Legend, title, tight layout, PNG at 100 dpi; the figure is closed."""
    ax.legend(fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_negatives(rows: list[dict[str, Any]], path: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 4))
    for hard, color, label in ((False, "tab:gray", "other wrong"), (True, "tab:red", "hard negative")):
        pts = [r for r in rows if bool(r.get("hard_negative")) == hard]
        ax.scatter([r["wrongness"] for r in pts], [r["absurdity"] for r in pts], s=8, alpha=0.4, c=color,
                   label=f"{label} ({len(pts)})")
    ax.set_xlabel("wrongness")
    ax.set_ylabel("absurdity")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    _save(plt, fig, ax, "sampled wrong solutions", path)


def plot_pair_weights(weights: list[tuple[float, str]], path: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 4))
    kinds = sorted({k for _, k in weights})
    ax.hist([[w for w, k in weights if k == kind] for kind in kinds], bins=30, stacked=True, label=kinds)
    ax.set_xlabel("pair weight (mean 1)")
    ax.set_ylabel("pairs")
    _save(plt, fig, ax, f"verifier pair weights ({len(weights)} pairs)", path)


def plot_margins(margins: dict[str, list[tuple[int, float]]], path: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, pts in margins.items():
        ax.plot([s for s, _ in pts], [m for _, m in pts], label=name)
    ax.axhline(0, color="black", lw=0.5)
    ax.set_xlabel("DPO step")
    ax.set_ylabel("reward margin (chosen - rejected)")
    _save(plt, fig, ax, "DPO reward margins", path)


def _profile_table(summary: dict[str, Any]) -> str:
    head = ["model", "wrong"] + list(ERR_DIMS) + ["hard neg.", "wrongness", "absurdity"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, m in summary["models"].items():
        ep = m.get("error_profile", {})
        if "mean" not in ep:
            lines.append("| " + " | ".join([name, str(ep.get("n_wrong", 0))] + ["-"] * (len(head) - 2)) + " |")
            continue
        cells = [name, str(ep["n_wrong"])] + [f"{ep['mean'][d]:.2f}" for d in ERR_DIMS]
        cells += [f"{100 * ep['hard_negative']:.0f}%", f"{ep['wrongness']:.2f}", f"{ep['absurdity']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _subset_table(summary: dict[str, Any]) -> str:
    cols = subset_columns(summary)
    first = next(iter(summary["models"].values()))

    def count(g: str, k: str | None) -> int:
        return first["n"] if g == "overall" else (first[g] if k is None else first[g][k])["n"]

    head = ["model"] + [f"{label} (n={count(g, k)})" for label, g, k in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, m in summary["models"].items():
        lines.append("| " + " | ".join([name] + [f"{100 * _subset_acc(m, g, k):.1f}" for _, g, k in cols]) + " |")
    return "\n".join(lines)


def _sampled_table(summary: dict[str, Any]) -> str | None:
    keys = sorted({k for m in summary["models"].values() for k in m if k.startswith("pass@")}, key=lambda k: int(k[5:]))
    if not keys:
        return None
    head = ["model"] + keys + ["majority"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, m in summary["models"].items():
        lines.append("| " + " | ".join([name] + [f"{100 * m.get(k, 0):.1f}" for k in keys + ["majority"]]) + " |")
    return "\n".join(lines)


def write_report(out_dir: str, summary: dict[str, Any], inputs: ReportInputs, title: str = "hsdpo evaluation",
                 plots: bool = True) -> list[str]:
    """Write report.md (+ PNGs) into a local folder; returns the file names written."""
    os.makedirs(out_dir, exist_ok=True)
    files: list[str] = []
    nm = summary.get("near_miss", {})
    md = [f"# {title}", "",
          f"Greedy decoding on {summary['num_problems']} held-out problems ({summary.get('split', 'test')} split), "
          "each solution judged by the MathVerifier.", "", format_comparison(summary), ""]
    md += [f"- {line}" for line in inputs.notes]
    md += ["", "## Accuracy (%) by subset", "",
           f"Near-miss: problems where `{nm.get('ref')}`'s greedy wrong answer was a hard negative "
           f"({nm.get('n', 0)} problems)." if nm.get("ref") else "No near-miss subset (no reference model).",
           "", _subset_table(summary), ""]
    sampled = _sampled_table(summary)
    if sampled:
        md += ["## Sampled pass@k and majority vote (%)", "", sampled, ""]
    md += ["## Error profile of the wrong greedy answers", "",
           "Mean of each error dimension (0 = no error) over each model's wrong answers.", "", _profile_table(summary), ""]
    if plots:
        md += ["## Plots", ""]
        drawn = [("accuracy.png", "accuracy by model and subset", True, lambda p: plot_accuracy(summary, p)),
                 ("negatives.png", "wrongness x absurdity of the sampled negatives", bool(inputs.negatives),
                  lambda p: plot_negatives(inputs.negatives, p)),
                 ("pair_weights.png", "pair-weight histogram", bool(inputs.pair_weights),
                  lambda p: plot_pair_weights(inputs.pair_weights, p)),
                 ("dpo_margins.png", "DPO reward margins over steps", bool(inputs.margins),
                  lambda p: plot_margins(inputs.margins, p))]
        for name, caption, has_data, draw in drawn:
            if has_data:
                draw(os.path.join(out_dir, name))
                files.append(name)
                md += [f"![{caption}]({name})", ""]
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write("\n".join(md))
    return ["report.md", *files]
