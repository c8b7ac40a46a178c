"""Regenerate the figures and the numbers of docs/snr.md (offline, ~1 minute on a laptop CPU).

    python scripts/make_snr_docs.py            # writes docs/img/snr_*.png, prints the tables
    python scripts/make_snr_docs.py --latents data/mnist-latent   # reuse prepared mnist-ae latents

Everything comes from the library itself (fasterdit.diffusion.snr) on the embedded MNIST subset, so
the page can never drift from what ``fasterdit snr`` prints.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

from fasterdit.data.measure import measure_data_std
from fasterdit.diffusion.snr import default_window, recommend_scale, snr_distribution
from fasterdit.viz.snr import save_snr_plot

ROOT = Path(__file__).resolve().parents[1]
IMG = ROOT / "docs" / "img"
PRESETS = ("dit", "sit", "fasterdit")


def _row(d, window) -> str:
    s = d.summary(window)
    q = s.quantiles
    cells = [d.label, f"{d.data_std:.3f}", f"{d.effective_std:.3f}", f"{s.mode:+.2f}", f"{s.mean:+.2f}"]
    cells += [
        f"{s.std:.2f}",
        f"{q[0.05]:+.2f}",
        f"{q[0.5]:+.2f}",
        f"{q[0.95]:+.2f}",
        f"{s.mass_in_window:.3f}",
    ]
    return "| " + " | ".join(cells) + " |"


def latent_section(latents: Path | None, window) -> None:
    """The presets on the latents of the shipped autoencoder (prepared here when no folder is given)."""
    from fasterdit.data.prepare import prepare

    with tempfile.TemporaryDirectory() as tmp:
        if latents is None:
            latents = Path(tmp) / "mnist-latent"
            prepare("mnist", latents, 32, "mnist-ae", small="pad", workers=0, progress=False)
        m = json.loads((latents / "manifest.json").read_text())
        stats = measure_data_std(latents)
    sf = float(m["scaling_factor"])
    raw = stats.pooled_std / sf
    raw_channels = [float(v) / sf for v in stats.std]
    print(f"\nmnist-ae latents ({m['num_items']} digits): raw pooled std {raw:.3f}, per channel "
          + ", ".join(f"{v:.3f}" for v in raw_channels) + f"; scaling_factor {sf:.4f}")
    print(f"VAE scaling (dit, sit): shift 2 ln(scaling_factor) = {2 * math.log(sf):+.3f} nats")
    print("fasterdit per-channel standardisation: shift from the raw latents per channel "
          + ", ".join(f"{-2 * math.log(v):+.3f}" for v in raw_channels) + " nats; from the VAE-scaled "
          + ", ".join(f"{-2 * math.log(float(v)):+.3f}" for v in stats.std) + " nats")
    dists = [snr_distribution(p, stats) for p in PRESETS]
    save_snr_plot(dists, None, IMG / "snr_presets_mnist_latent.png", window=window,
                  title=f"mnist-ae latents (raw std {raw:.2f}, x scaling_factor {sf:.3f}): the three presets")
    print("\n| recipe | data std | eff. std | mode | mean | std | 5% | median | 95% | mass in window |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for d in dists:
        print(_row(d, window))
    for preset in ("sit", "dit"):
        r = recommend_scale(preset, stats, window=window, method="median")
        print(f"recommend {preset} (median): k = {r.k:.3f} on top of scaling_factor, "
              f"shift {r.shift_nats:+.3f} nats")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--latents", type=Path, default=None, help="prepared mnist-ae latents (default: prepare)")
    args = p.parse_args()
    IMG.mkdir(parents=True, exist_ok=True)
    window = default_window()
    stats = measure_data_std("mnist")
    std = stats.pooled_std
    print(f"embedded MNIST (train split, pixels in [-1, 1]): mean {stats.pooled_mean:.4f}, std {std:.4f}")
    print(f"default window: [{window[0]:.3f}, {window[1]:.3f}] nats")

    # 1. the three presets on MNIST
    dists = [snr_distribution(p, stats) for p in PRESETS]
    save_snr_plot(
        dists,
        None,
        IMG / "snr_presets_mnist.png",
        window=window,
        title=f"Embedded MNIST (pixel std {std:.3f}): the three presets",
    )
    print("\n| recipe | data std | eff. std | mode | mean | std | 5% | median | 95% | mass in window |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for d in dists:
        print(_row(d, window))

    # 2. what the data std does: sit moves, fasterdit (standardised) does not
    save_snr_plot(
        ["sit", "fasterdit"],
        [0.25, 0.5, 1.0, 2.0],
        IMG / "snr_std_sweep.png",
        window=window,
        title="Changing the data std shifts λ by 2·ln(std) — unless the recipe standardises",
    )

    # 3. recommended scale for sit and dit on MNIST, before / after
    print("\n| recipe | method | k | shift (nats) | eff. std after | mass in window before → after |")
    print("|---|---|---|---|---|---|")
    curves = []
    for preset in ("sit", "dit"):
        for method in ("median", "mass"):
            r = recommend_scale(preset, stats, window=window, method=method)
            print(
                f"| {preset} | {method} | {r.k:.3f} | {r.shift_nats:+.3f} | {r.effective_std_after:.3f} "
                f"| {r.mass_in_window_before:.3f} → {r.mass_in_window_after:.3f} |"
            )
        r = recommend_scale(preset, stats, window=window, method="mass")
        before = snr_distribution(preset, stats)
        after = before.scaled(r.k)
        after.label = f"{preset}, data ×{r.k:.2f}"
        curves += [before, after]
    save_snr_plot(
        curves,
        None,
        IMG / "snr_recommend_mnist.png",
        window=window,
        title="MNIST: before and after the recommended scale (max. mass in window)",
    )
    r = recommend_scale("dit", stats, reference="fasterdit")
    print(f"\ndit matched to fasterdit's median: k = {r.k:.3f} (shift {r.shift_nats:+.3f} nats)")
    latent_section(args.latents, window)
    print(f"figures in {IMG}")


if __name__ == "__main__":
    main()
