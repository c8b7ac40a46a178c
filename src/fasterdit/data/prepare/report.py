"""The end of a preparation: statistics merged over shards and ranks, the reports of skipped and
warned-about files, and the manifest, written once by rank 0 after every shard exists.

Why the manifest last: it is what the trainer reads, so its presence means the preparation is complete.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from fasterdit.data.prepare.outdir import FILES_TXT, SKIPPED_TSV, WARNINGS_TSV, escape_name
from fasterdit.data.prepare.plan import Plan
from fasterdit.data.prepared import FORMAT_VERSION, MANIFEST
from fasterdit.data.stats import RunningStats
from fasterdit.errors import DataError
from fasterdit.runtime.files import atomic_write_text

#: what a rank reports about each of its shards: (file name, number of items, skipped, warnings)
ShardInfo = tuple[str, int, list, list]


def finish_stats(per_shard: list[dict[str, Any]], kind: str, group: Any) -> dict[str, Any]:
    """Merge shard statistics (in shard order), all-reduce across ranks (on ``group``), and express them
    as the per-channel mean/std of the model's input plus the pooled std over all channels."""
    names = ("x",) if kind == "pixel" else ("mu", "var")
    total = {n: RunningStats() for n in names}
    for st in per_shard:
        for n in names:
            total[n].merge(RunningStats.from_state_dict(st[n]))
    for n in names:
        total[n].all_reduce(group=group)
    if total[names[0]].count == 0:
        return {}
    if kind == "pixel":
        s = total["x"]
        return {
            "channel_mean": s.mean.tolist(),
            "channel_std": s.std.tolist(),
            "std": s.pooled_std,
            "count_per_channel": s.count,
        }
    mu, var = total["mu"], total["var"]
    channel_var = mu.var + var.mean
    pooled_var = mu.pooled_var + float(var.mean.mean())
    return {
        "channel_mean": mu.mean.tolist(),
        "channel_std": channel_var.sqrt().tolist(),
        "std": math.sqrt(pooled_var),
        "count_per_channel": mu.count,
        "latent_mean_std": mu.std.tolist(),  # spread of the posterior means alone
        "posterior_std_rms": var.mean.sqrt().tolist(),  # RMS of the posterior std (scaled)
    }


def _tsv_field(s: str) -> str:
    """A path or reason as one TSV field: escaped as files.txt lines are, and a tab as ``\\u0009``."""
    return escape_name(s).replace("\t", "\\u0009")


def _write_tsv(path: Path, header: str, rows: list[tuple[str, str]]) -> None:
    atomic_write_text(path, header + "".join(f"{_tsv_field(p)}\t{_tsv_field(r)}\n" for p, r in rows))


def write_manifest(
    out: Path,
    plan: Plan,
    allinfo: dict[int, ShardInfo],
    stats: dict[str, Any],
    *,
    images: Path,
    stray: list[tuple[str, str]],
    class_to_idx: dict[str, int],
    origin: dict[str, Any] | None,
    world: int,
) -> dict[str, Any]:
    """Rank 0: write skipped.tsv, warnings.tsv and then the manifest from every rank's shard ``allinfo``;
    returns the manifest. Raises DataError when a shard is missing or no image was usable."""
    num_shards = plan.num_shards
    if sorted(allinfo) != list(range(num_shards)):
        raise DataError(
            f"{out}: internal error, shards {sorted(set(range(num_shards)) - set(allinfo))} missing"
        )
    all_skipped = list(stray)
    all_warn: list[tuple[str, str]] = []
    shards = []
    for k in range(num_shards):
        name, n, sk, wn = allinfo[k]
        shards.append({"file": name, "num_items": int(n), "rank": int(name.split("-r")[1][:3])})
        all_skipped += [(str(images / r), reason) for r, reason in sk]
        all_warn += [(str(images / r), msg) for r, msg in wn]
    where = _tsv_field(str(images.resolve()))
    _write_tsv(
        out / SKIPPED_TSV,
        f"# fasterdit prepare: {len(all_skipped)} file(s) under {where} skipped\n# path\treason\n",
        all_skipped,
    )
    _write_tsv(
        out / WARNINGS_TSV,
        f"# fasterdit prepare: {len(all_warn)} file(s) under {where} used with a warning\n# path\twarning\n",
        all_warn,
    )
    num_items = sum(s["num_items"] for s in shards)
    if num_items == 0:
        raise DataError(
            f"no usable image in {images}: all {plan.num_files} files were skipped; see {out / SKIPPED_TSV}"
        )
    c, config = plan.content, plan.config
    latent = c.kind == "latent"
    manifest = {
        "format_version": FORMAT_VERSION,
        "kind": c.kind,
        "vae": c.vae_name,
        "scaling_factor": c.scale,
        "shift_factor": c.shift,
        "image_resolution": config["image_resolution"],
        "resolution": c.res,
        "channels": c.channels,
        "num_classes": len(class_to_idx),
        "class_to_idx": class_to_idx,
        "num_items": num_items,
        "num_images": plan.num_files - sum(len(allinfo[k][2]) for k in allinfo),
        "flip": ("stored" if latent else "random") if config["flip"] else "none",
        "storage_dtype": config["storage_dtype"],
        "shards": shards,
        "channel_mean": stats["channel_mean"],
        "channel_std": stats["channel_std"],
        "std": stats["std"],
        "stats": {
            "of": "scaled latents z = (mean + exp(logvar/2)*eps - shift_factor) * scaling_factor"
            if latent
            else "pixels in [-1, 1]",
            "method": "analytic: E[z] = mean of means; Var[z] = Var[means] + E[posterior var]"
            if latent
            else "exact over all pixels",
            **{k: v for k, v in stats.items() if k not in ("channel_mean", "channel_std", "std")},
        },
        "skipped": {"count": len(all_skipped), "report": SKIPPED_TSV},
        "warnings": {"count": len(all_warn), "report": WARNINGS_TSV},
        "files": FILES_TXT,
        "images": str(images.resolve()),
        "origin": origin,
        **({"align_features": dict(c.align)} if c.align is not None else {}),
        "settings": {
            "shard_size": plan.shard_size,
            "small": config["small"],
            "dtype": config["dtype"],
            "world_size": world,
        },
    }
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return manifest
