"""``fasterdit sample``: samples of a checkpoint (ours or an official DiT ``.pt``) as a PNG grid or an
ADM-style ``.npz`` (uint8 NHWC images under ``arr_0``, labels under ``arr_1``; what FID tools read).

Examples::

    fasterdit sample --ckpt runs/demo --num 100 --labels 0,1,2,3,4,5,6,7,8,9 --out grid.png
    fasterdit sample --ckpt runs/demo --num 1000 --sampler heun --steps 25 --out samples.npz
    fasterdit sample --ckpt DiT-XL-2-256x256.pt --vae mse --sampler ddpm --steps 250 --cfg 4 --labels 207,360
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

from fasterdit.errors import ConfigError, UserError

HELP = "Sample a checkpoint (ours or an official DiT .pt) to a PNG grid or an ADM-style .npz."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--ckpt",
        required=True,
        metavar="PATH",
        help="run dir, checkpoint dir, or an official DiT checkpoint (.pt)",
    )
    p.add_argument("--num", type=int, default=64, help="number of samples (default 64)")
    p.add_argument("--sampler", help="euler, heun, dopri5, euler-maruyama, ddpm, ddim (default: the run's)")
    p.add_argument("--steps", type=int, help="sampling steps (default: the run's; official: 250)")
    p.add_argument(
        "--cfg", type=float, help="classifier-free guidance scale (default: the run's; official: 4)"
    )
    p.add_argument(
        "--labels",
        metavar="L,L,...",
        help="class labels; each gets an equal share of --num, one grid row per label "
        "(default: every class for a PNG of <= 10 classes, else uniform random)",
    )
    p.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    p.add_argument("--out", required=True, metavar="FILE", help="grid.png or samples.npz")
    p.add_argument("--batch-size", type=int, default=256, help="samples per forward batch (default 256)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda (default auto)")
    p.add_argument(
        "--vae", help="VAE for latent models: hub id, local folder, or ema/mse (default: the run's)"
    )
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument(
        "--guide-channels",
        type=int,
        help="guide only the first N channels (3 reproduces the official DiT sampler)",
    )
    p.add_argument("--nrow", type=int, help="PNG: images per row (default: samples per label)")


def _labels(args, num_classes: int, for_png: bool, generator) -> tuple:
    import torch

    n = args.num
    if num_classes <= 0:
        if args.labels:
            raise ConfigError("--labels", "this model is unconditional")
        return None, None
    if args.labels:
        try:
            chosen = [int(v) for v in args.labels.replace(" ", "").split(",") if v != ""]
        except ValueError:
            raise ConfigError("--labels", f"expected comma-separated integers, got {args.labels!r}") from None
        bad = [c for c in chosen if not 0 <= c < num_classes]
        if not chosen or bad:
            raise ConfigError("--labels", f"labels must be in 0..{num_classes - 1}, got {bad or chosen}")
    elif for_png and num_classes <= 10:
        chosen = list(range(num_classes))
    else:
        return torch.randint(0, num_classes, (n,), generator=generator), None
    per = math.ceil(n / len(chosen))
    y = torch.tensor([c for c in chosen for _ in range(per)][:n], dtype=torch.long)
    return y, per


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from fasterdit.diffusion.sampling import sample
    from fasterdit.train.build import recipe_sampler
    from fasterdit.train.distributed import resolve_device
    from fasterdit.train.loading import load_trained

    out = Path(args.out)
    if out.suffix.lower() not in (".png", ".npz"):
        raise ConfigError("--out", f"must end in .png or .npz, got {out.name!r}")
    if args.num < 1:
        raise ConfigError("--num", f"must be >= 1, got {args.num}")
    if args.batch_size < 1:
        raise ConfigError("--batch-size", f"must be >= 1, got {args.batch_size}")
    device = resolve_device(args.device)
    lm = load_trained(args.ckpt, ema=not args.no_ema, device=device)
    model, recipe, data = lm.model, lm.recipe, lm.data
    official = lm.source == "official"
    s = lm.cfg.sample
    sampler = args.sampler or ("ddpm" if official else s.sampler) or recipe_sampler(recipe)
    steps = args.steps or (250 if official else s.steps)
    cfg_scale = args.cfg if args.cfg is not None else (4.0 if official else s.cfg_scale)
    if cfg_scale != 1.0 and (model.y_embedder is None or not model.y_embedder.has_null_class):
        raise ConfigError(
            "--cfg", "this model was trained without label dropout (no null class): use --cfg 1"
        )

    is_latent = bool(data.get("is_latent"))
    vae = None
    if is_latent:
        from fasterdit.data.vae import load_vae

        vae_id = args.vae or data.get("vae")
        if not vae_id:
            raise UserError("this is a latent model and its run records no VAE: pass --vae ID_OR_PATH")
        vae = load_vae(vae_id, device=device)

    g = torch.Generator().manual_seed(args.seed)
    y_all, per_label = _labels(args, int(model.num_classes or 0), out.suffix.lower() == ".png", g)
    C = model.in_channels
    H, W = model.input_size
    images, t0, nfe = [], time.time(), 0
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else None
    for start in range(0, args.num, args.batch_size):
        n = min(args.batch_size, args.num - start)
        noise = torch.randn((n, C, H, W), generator=g).to(device)
        y = None if y_all is None else y_all[start : start + n].to(device)
        gs = torch.Generator(device=device).manual_seed(args.seed * 1_000_003 + start)
        ctx = amp if amp is not None else _null()
        with ctx:
            res = sample(
                model,
                recipe,
                noise,
                y=y,
                sampler=sampler,
                steps=steps,
                cfg_scale=cfg_scale,
                generator=gs,
                guide_channels=args.guide_channels,
            )
        x = res.x.float()
        nfe = res.nfe
        if vae is not None:
            from fasterdit.data.vae import decode

            x = decode(vae, x, batch_size=16)
        images.append(x.clamp(-1, 1).cpu())
        print(f"  {start + n}/{args.num} samples", flush=True)
    x = torch.cat(images)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".png":
        from fasterdit.viz import save_image_grid

        nrow = args.nrow or per_label or max(1, math.ceil(math.sqrt(len(x))))
        scale = max(1, min(4, 128 // max(1, x.shape[-1])))
        save_image_grid(x, out, nrow=nrow, scale=scale)
    else:
        from fasterdit.viz import to_uint8

        labels = (y_all if y_all is not None else torch.zeros(len(x), dtype=torch.long)).numpy()
        np.savez(out, arr_0=to_uint8(x), arr_1=labels.astype(np.int64))
    dt = time.time() - t0
    src = f"{lm.path} (step {lm.step})" if lm.step is not None else str(lm.path)
    print(
        f"wrote {out}: {len(x)} samples from {src}, sampler {sampler}, {steps} steps, "
        f"NFE {nfe}, cfg {cfg_scale}, {dt:.1f} s"
    )
    return 0


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
