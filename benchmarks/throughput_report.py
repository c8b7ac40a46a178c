"""``throughput.py``'s report: docs/benchmarks/throughput.md with the results table, the before/after
comparison, the figure, the verdict on the issue's targets, and where the time of the fasterdit step goes
(the ``torch.profiler`` table, grouped into op categories).

Why a module of its own: the report only formats the measured numbers and profiles it is given; the
measuring code stays small and its inductor settings stay ahead of any import of torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import common

CATEGORIES = [
    (
        "matmul (linear, conv, bmm)",
        (
            "aten::mm",
            "aten::addmm",
            "aten::bmm",
            "aten::matmul",
            "aten::linear",
            "aten::mkldnn_convolution",
            "aten::convolution_backward",
            "aten::baddbmm",
        ),
    ),
    ("attention kernel", ("aten::_scaled_dot_product", "aten::_softmax", "aten::_softmax_backward_data")),
    ("layer norm", ("aten::native_layer_norm",)),
    ("copies / layout (copy_, cat, clone)", ("aten::copy_", "aten::cat", "aten::clone", "aten::contiguous")),
    (
        "element-wise math",
        (
            "aten::mul",
            "aten::add",
            "aten::sub",
            "aten::div",
            "aten::gelu",
            "aten::silu",
            "aten::tanh",
            "aten::exp",
            "aten::pow",
            "aten::where",
            "aten::addcmul",
            "aten::neg",
            "aten::sum",
            "aten::mean",
            "aten::sqrt",
            "aten::rsqrt",
            "aten::clamp",
            "aten::cos",
            "aten::sin",
            "aten::fill_",
            "aten::zero_",
            "aten::threshold",
            "aten::sigmoid",
        ),
    ),
    (
        "optimizer + EMA (AdamW, lerp, norms)",
        ("aten::_fused_adamw", "aten::lerp", "aten::_foreach", "aten::linalg_vector_norm", "aten::_adamw"),
    ),
]


def profile_tables(prof, top: int = 15) -> tuple[list[list[Any]], list[list[Any]], float]:
    """(top ops by self CPU time, time per category, total self time in ms)."""
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    ops = sorted(events, key=lambda e: -e.self_cpu_time_total)[:top]
    top_rows = [
        [f"`{e.key[:60]}`", e.count, e.self_cpu_time_total / 1e3, 100 * e.self_cpu_time_total / total]
        for e in ops
    ]
    cats: dict[str, float] = {name: 0.0 for name, _ in CATEGORIES}
    cats["other (autograd, dispatch, python ops)"] = 0.0
    for e in events:
        for name, prefixes in CATEGORIES:
            if e.key.startswith(prefixes):
                cats[name] += e.self_cpu_time_total
                break
        else:
            cats["other (autograd, dispatch, python ops)"] += e.self_cpu_time_total
    cat_rows = [[k, v / 1e3, 100 * v / total] for k, v in sorted(cats.items(), key=lambda kv: -kv[1])]
    return top_rows, cat_rows, total / 1e3


def report(args, raw: dict[str, Any], profiles: dict[str, Any], out: Path) -> Path:
    facts, peak, peak_best, results = raw["facts"], raw["peak_flops"], raw["peak_best"], raw["results"]
    L = ["# Training throughput on this CPU\n"]
    L.append(f"Command (from the repository root):\n\n```bash\n{raw['command']}\n```\n")
    L.append(f"Total wall time {raw['wall_seconds']:.0f} s.\n\n## Machine\n")
    L.append(common.facts_markdown(facts, common.loadavg()) + "\n")
    L.append(
        "Peak fp32 matmul rate, measured in this run (best of several `torch.matmul` of n×n by n×n, "
        "FLOPs = 2n³): " + ", ".join(f"n = {n}: **{v / 1e9:.1f} GFLOP/s**" for n, v in peak.items()) + ".\n"
    )
    L.append("## Results\n")
    L.append(
        "Each variant's step time is the median over its measured steps (after 3 warm-up steps); the "
        f"variants run in {next(iter(results.values()))['rounds']} interleaved rounds and the table shows "
        "each one's median round, with every round's samples/s in the last column. FLOP/s = analytic "
        "training FLOPs per step (`estimate_cost`, matmuls only, 3 × forward) ÷ step time; % peak = that ÷ "
        "the best measured matmul rate. Ratio = samples/s ÷ the baseline's (both median rounds).\n"
    )
    rows = []
    variants = ("baseline", "dit-recipe", "fasterdit", "fasterdit-compiled")
    for label, r in results.items():
        base = r["baseline"]["samples_per_sec"]
        for v in variants:
            if v not in r:
                continue
            m = r[v]
            rows.append(
                [
                    f"{label}: `{r['model']}` on {r['dataset']}, batch {r['batch']}",
                    v,
                    m["samples_per_sec"],
                    m["step_time"] * 1e3,
                    m["flops_per_sec"] / 1e9,
                    100 * m["flops_per_sec"] / peak_best,
                    f"{m['samples_per_sec'] / base:.2f}×",
                    " / ".join(f"{x:.4g}" for x in m.get("rounds_samples_per_sec", [])),
                    m["best_step_time"] * 1e3,
                    f"{r['baseline']['best_step_time'] / m['best_step_time']:.2f}×",
                ]
            )
    L.append(
        common.md_table(
            [
                "model",
                "step",
                "samples/s",
                "ms/step",
                "GFLOP/s",
                "% peak",
                "ratio",
                "rounds (samples/s)",
                "best ms/step",
                "ratio (best steps)",
            ],
            rows,
        )
    )
    L.append(
        "\nThe last two columns use the single fastest step of each variant over all rounds: the least "
        "disturbed measurement of its cost on this machine, and a second estimate of the ratio.\n"
    )
    L.append(
        "* `baseline`: `benchmarks/baseline_dit.py`, the original DiT's way (unfused softmax attention, "
        "ε-MSE + VB loss, per-parameter AdamW, Python-loop EMA, fp32, no compile). Same network: max "
        "|output difference| to fasterdit's DiT with the same weights "
        + ", ".join(f"{r['baseline']['max_output_diff']:.1e} ({label})" for label, r in results.items())
        + "."
    )
    L.append("* `dit-recipe`: fasterdit's trainer with the `dit` preset (same loss as the baseline).")
    L.append(
        "* `fasterdit`: fasterdit's trainer with the `fasterdit` preset (flow, lognorm t, std "
        "modulation, direction loss): the step a user of this library runs."
    )
    if any("fasterdit-compiled" in r for r in results.values()):
        L.append(
            "* `fasterdit-compiled`: the same with `train.compile=true`, which compiles the loss and the "
            "model as one graph (cold first-step compile time, empty inductor cache: "
            + ", ".join(
                f"{r['fasterdit-compiled']['first_step_seconds_all'][0]:.0f} s ({label})"
                for label, r in results.items()
                if "fasterdit-compiled" in r
            )
            + ")."
        )
    L.append("")
    if args.compare and Path(args.compare).is_file():
        import json

        before = json.loads(Path(args.compare).read_text())
        L.append("## Before / after the speed work\n")
        L.append(
            f"Before: `{before.get('command', '?')}` at {before['facts']['date']} (load at start "
            f"{before['facts']['loadavg_start'][0]:.2f}); after: this run.\n"
        )
        rows = []
        for label, r in results.items():
            b = before["results"].get(label)
            if not b:
                continue
            for v in variants:
                if v in r and v in b:
                    rows.append(
                        [
                            f"{label} `{r['model']}`",
                            v,
                            b[v]["samples_per_sec"],
                            r[v]["samples_per_sec"],
                            f"{r[v]['samples_per_sec'] / b[v]['samples_per_sec']:.2f}×",
                        ]
                    )
        L.append(
            common.md_table(["model", "step", "before samples/s", "after samples/s", "after ÷ before"], rows)
        )
        L.append("")
    png = plot(results, peak_best, out / "throughput.png")
    L.append(f"![throughput]({png.name})\n")
    L.extend(ema_section(raw["ema"]))
    L.extend(verdict(results, peak_best, profiles))
    for label, prof in profiles.items():
        if prof is None:
            continue
        top, cats, total = profile_tables(prof)
        r = results[label]
        L.append(f"## Where the time goes: fasterdit step, {label} (`{r['model']}`, batch {r['batch']})\n")
        L.append(f"`torch.profiler` over 3 trainer steps, self CPU time {total:.0f} ms in all.\n")
        L.append(common.md_table(["category", "ms", "%"], cats))
        L.append("")
        L.append(common.md_table(["op", "calls", "self ms", "%"], top))
        L.append("")
    md = out / "throughput.md"
    md.write_text("\n".join(L) + "\n")
    return md


def ema_section(ema: dict[str, Any]) -> list[str]:
    """The EMA update alone: the trainer's fused lerp against the sub/mul/add chain it replaced."""
    L = ["## The EMA update\n"]
    L.append(
        f"One EMA update of each model's weights, the fastest of {next(iter(ema.values()))['reps']} "
        "interleaved repetitions (the median in parentheses): `EMA.update` (one `lerp` per tensor, weight "
        "(1 − decay)·ok on the device: it reads the EMA and the weights and writes the EMA, 3 sweeps) "
        "against the chain it replaced (`_foreach_sub`, `_foreach_mul_`, `_foreach_add_` with a model-sized "
        "temporary: 8 sweeps).\n"
    )
    rows = []
    keys = ("sub/mul/add chain (before)", "fused lerp (EMA.update)")
    for label, e in ema.items():
        (old, new), (med_old, med_new) = (
            [e[stat][k] for k in keys] for stat in ("seconds", "median_seconds")
        )
        rows.append(
            [
                f"{label}: `{e['model']}`",
                e["params"],
                e["tensors"],
                f"{old * 1e3:.3g} ({med_old * 1e3:.3g})",
                f"{new * 1e3:.3g} ({med_new * 1e3:.3g})",
                f"{old / new:.2f}× ({med_old / med_new:.2f}×)",
            ]
        )
    L.append(common.md_table(["model", "parameters", "tensors", "chain ms", "lerp ms", "chain ÷ lerp"], rows))
    L.append("")
    return L


def verdict(results: dict[str, Any], peak: float, profiles: dict[str, Any]) -> list[str]:
    """The issue's two targets per model, and the ceiling the profile puts on any further speed-up."""
    L = ["## Targets\n"]
    rows = []
    for label, r in results.items():
        fast = [v for v in ("fasterdit", "fasterdit-compiled") if v in r]
        best_variant = max(fast, key=lambda v: r[v]["samples_per_sec"])
        m, b = r[best_variant], r["baseline"]
        ratio = m["samples_per_sec"] / b["samples_per_sec"]
        ratio_best = b["best_step_time"] / m["best_step_time"]
        frac = m["flops_per_sec"] / peak
        if min(ratio, ratio_best) >= 1.3:
            speed_ok = "met"
        elif max(ratio, ratio_best) >= 1.3:
            speed_ok = "met by one estimate"
        else:
            speed_ok = "not met"
        ceiling = ""
        if profiles.get(label) is not None:
            _, cats, _ = profile_tables(profiles[label])
            share = next(c[2] for c in cats if c[0].startswith("matmul")) / 100
            # the matmuls are the same FLOPs in every variant: with all other work free, the eager
            # fasterdit step could at most get 1/share faster
            ceiling = f"{1 / share:.2f}× the eager step (matmul {100 * share:.0f}% of it)"
        rows.append(
            [
                f"{label} `{r['model']}`",
                best_variant,
                f"{ratio:.2f}× / {ratio_best:.2f}×",
                speed_ok,
                f"{100 * frac:.0f}%",
                "met" if frac >= 0.5 else "not met",
                ceiling,
            ]
        )
    L.append(
        common.md_table(
            [
                "model",
                "fastest fasterdit step",
                "÷ baseline (median / best steps)",
                "≥ 1.3×",
                "% of peak matmul",
                "≥ 50%",
                "ceiling if all non-matmul work were free",
            ],
            rows,
        )
    )
    L.append(
        "\nWhy the ratio is small on this CPU: the baseline runs the *same* fp32 matmuls (the same "
        "network, the same shapes, the same BLAS kernels), about half of every step (last column), so only "
        "the other half (element-wise math, copies, attention, optimizer) can be made faster, and the last "
        "column bounds what that can buy even if it cost nothing. The levers that make a DiT step "
        "several times faster on a GPU (flash attention over long sequences, bf16 tensor cores, fused "
        "kernels replacing launch-bound small ops, CUDA graphs) have no counterpart here: the sequences "
        "are 16–196 tokens, bf16 is slower than fp32 on this CPU (no AMX), and there is no kernel-launch "
        "overhead to remove. `train.compile` fuses the element-wise work (loss and model in one graph), "
        "which pays most on the smallest model, where that work is the largest share.\n"
    )
    return L


def plot(results: dict[str, Any], peak: float, path: Path) -> Path:
    plt = common.pyplot()
    variants = [
        v
        for v in ("baseline", "dit-recipe", "fasterdit", "fasterdit-compiled")
        if any(v in r for r in results.values())
    ]
    colours = {
        "baseline": "0.55",
        "dit-recipe": "#1f77b4",
        "fasterdit": "#d62728",
        "fasterdit-compiled": "#ff9896",
    }
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 3.8), dpi=150)
    labels = list(results)
    w = 0.8 / len(variants)
    for i, v in enumerate(variants):
        xs = [j + (i - (len(variants) - 1) / 2) * w for j in range(len(labels))]
        rel = [
            results[lb][v]["samples_per_sec"] / results[lb]["baseline"]["samples_per_sec"]
            if v in results[lb]
            else 0
            for lb in labels
        ]
        pk = [100 * results[lb][v]["flops_per_sec"] / peak if v in results[lb] else 0 for lb in labels]
        ax.bar(xs, rel, w, color=colours[v], label=v)
        ax2.bar(xs, pk, w, color=colours[v], label=v)
    names = [f"{lb}\n{results[lb]['model']} b{results[lb]['batch']}" for lb in labels]
    for a in (ax, ax2):
        a.set_xticks(range(len(labels)))
        a.set_xticklabels(names)
        a.spines[["top", "right"]].set_visible(False)
        a.grid(True, axis="y", color="0.92")
    ax.axhline(1.3, color="k", lw=0.8, ls=":")
    ax.set_ylabel("samples/s ÷ baseline (target 1.3, dotted)")
    ax.legend(frameon=False, fontsize=7)
    ax2.axhline(50, color="k", lw=0.8, ls=":")
    ax2.set_ylabel("% of measured peak matmul FLOP/s (target 50)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
