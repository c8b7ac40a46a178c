#!/usr/bin/env python
"""Train ``mnist-ssl``, the small self-supervised encoder fasterdit ships for REPA on the embedded digits.

    python scripts/train_ssl_encoder.py                      # the shipped weights (seed 0, ~2 min, 1 thread)
    python scripts/train_ssl_encoder.py --steps 50 --out /tmp/enc.safetensors   # a quick look

Reproducing the shipped file: ``OMP_NUM_THREADS=1 python scripts/train_ssl_encoder.py --out
/tmp/enc.safetensors`` (the defaults: seed 0, 900 steps, ``--threads 1``) gives tensors bit-identical to
``src/fasterdit/assets/encoder_mnist_ssl.safetensors``: checked on the 2-core AMD EPYC CPU with torch
2.13.0+cpu, every tensor equal and the metadata equal but for ``seconds`` (the measured wall time, the only
reason the two files differ as bytes). The script sets torch's thread count itself (``--threads``); other
thread counts, CPUs or torch builds were not checked (a multi-threaded reduction may change the last bits).

Why it exists: REPA aligns a DiT's tokens with the patch features of a frozen self-supervised encoder
(DINOv2 on ImageNet). The laptop test bed (MNIST digits, mnist-ae latents) needs an encoder of its own that
plays the same part: trained **without labels**, on the **training split only**, giving a patch-feature
grid. So: SimCLR (Chen et al. 2020) on :class:`~fasterdit.data.encoders.mnist_ssl.MnistSSLNet`: two
random augmentations of each digit (affine warp, a cut-out square, pixel noise), the spatial mean of the
stride-8 feature map through a small MLP head, InfoNCE at temperature 0.2 over the batch (2B - 2
negatives); the head is discarded, as in SimCLR. The digits are padded to 32 x 32 as for ``mnist-ae``.

Every random choice (initialisation, batch order, augmentations) comes from the seed through
``torch.Generator``s. The quality gate uses labels only to *measure*: a cosine k-NN classifier (k = 10) on
the pooled features, fit on the training split and scored on the held-out digits, must reach
``--min-knn`` (a random-init network of the same shape scores far lower; both are recorded). Writes the
weights (``src/fasterdit/assets/encoder_mnist_ssl.safetensors``, float32, < 1 MB) with the settings and
the measured quality in the safetensors metadata.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from fasterdit.data.embedded import load_embedded, pad_images
from fasterdit.data.encoders.mnist_ssl import ASSET, MnistSSLNet

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "src" / "fasterdit" / "assets" / ASSET
SIDE = 32  # the digits padded as for mnist-ae: a 4 x 4 feature grid


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=900, help="optimizer steps (900 x 128 = 26 epochs)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3, help="AdamW peak lr, cosine decay to 0")
    p.add_argument("--temperature", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--min-knn", type=float, default=0.90, help="quality gate: held-out k-NN accuracy")
    p.add_argument("--out", type=Path, default=OUT, help=f"output file ({OUT.relative_to(ROOT)})")
    return p.parse_args(argv)


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """A random view of each digit (N, 1, 32, 32) in [-1, 1]: rotation ±20°, scale 0.8-1.2, shift ±3 px,
    a 10 x 10 cut-out with probability 1/2, Gaussian pixel noise of std 0.1."""
    n = x.shape[0]
    ang = (torch.rand(n, generator=g) * 2 - 1) * math.radians(20)
    scale = 0.8 + 0.4 * torch.rand(n, generator=g)
    shift = (torch.rand(n, 2, generator=g) * 2 - 1) * (3 / (SIDE / 2))
    cos, sin = torch.cos(ang) / scale, torch.sin(ang) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x + 1.0, grid, align_corners=False, padding_mode="zeros") - 1.0  # background -1
    cy, cx = (torch.randint(0, SIDE - 10, (2, n), generator=g)).unbind(0)
    keep = torch.rand(n, generator=g) < 0.5
    rows, cols = torch.arange(SIDE).view(1, SIDE, 1), torch.arange(SIDE).view(1, 1, SIDE)
    in_rows = (rows >= cy.view(-1, 1, 1)) & (rows < cy.view(-1, 1, 1) + 10)
    box = in_rows & (cols >= cx.view(-1, 1, 1)) & (cols < cx.view(-1, 1, 1) + 10)
    out = torch.where((box & ~keep.view(-1, 1, 1)).unsqueeze(1), torch.full_like(out, -1.0), out)
    return out + 0.1 * torch.randn(out.shape, generator=g)


def info_nce(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent over 2B embeddings (views i and i + B are positives)."""
    z = F.normalize(z, dim=1)
    b = z.shape[0] // 2
    sim = z @ z.t() / temperature
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)])
    return F.cross_entropy(sim, target)


def pooled(net: MnistSSLNet, x: torch.Tensor) -> torch.Tensor:
    return net(x).mean(dim=(2, 3))


@torch.no_grad()
def knn_accuracy(net: MnistSSLNet, k: int = 10) -> float:
    """Cosine k-NN (majority vote) of the held-out digits among the training digits' pooled features."""
    net.eval()
    xt, yt = load_embedded("mnist", "train")
    xh, yh = load_embedded("mnist", "heldout")
    ft = F.normalize(torch.cat([pooled(net, pad_images(c, SIDE)) for c in xt.split(500)]), dim=1)
    fh = F.normalize(torch.cat([pooled(net, pad_images(c, SIDE)) for c in xh.split(500)]), dim=1)
    nn_idx = (fh @ ft.t()).topk(k, dim=1).indices
    votes = F.one_hot(yt[nn_idx], 10).sum(1)
    return float((votes.argmax(1) == yh).float().mean())


def train(args: argparse.Namespace) -> tuple[MnistSSLNet, list[float]]:
    torch.manual_seed(args.seed)  # the initialisation (nn.Module draws from the global RNG)
    net = MnistSSLNet()
    head = nn.Sequential(nn.Linear(net.dim, 256), nn.GELU(), nn.Linear(256, 64))
    params = [*net.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4)
    x, _ = load_embedded("mnist", "train")  # labels unused: self-supervised
    x = pad_images(x, SIDE)
    g = torch.Generator().manual_seed(args.seed + 1)
    losses, t0 = [], time.time()
    for step in range(args.steps):
        lr = args.lr * 0.5 * (1 + math.cos(math.pi * step / args.steps)) * min(1.0, (step + 1) / 50)
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.randint(0, len(x), (args.batch_size,), generator=g)
        views = torch.cat([augment(x[idx], g), augment(x[idx], g)])
        loss = info_nce(head(pooled(net, views)), args.temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step:4d}  loss {loss:.4f}  lr {lr:.2e}  {time.time() - t0:.0f} s", flush=True)
    return net.eval(), losses


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    net, losses = train(args)
    knn = knn_accuracy(net)
    torch.manual_seed(args.seed)
    knn_random = knn_accuracy(MnistSSLNet())
    params = sum(p.numel() for p in net.parameters())
    meta = {
        "what": "mnist-ssl: SimCLR ConvNet for REPA on the embedded digits (scripts/train_ssl_encoder.py)",
        "data": "embedded MNIST, training split (4,500 digits), padded to 32x32; no labels used in training",
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "out"},
        "parameters": params,
        "final_loss": sum(losses[-50:]) / len(losses[-50:]),
        "knn10_heldout_accuracy": knn,
        "knn10_heldout_accuracy_random_init": knn_random,
        "seconds": round(time.time() - t0, 1),
        "torch": torch.__version__,
    }
    print(json.dumps(meta, indent=1))
    if knn < args.min_knn:
        print(f"quality gate failed: k-NN accuracy {knn:.3f} < {args.min_knn}", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(args.out), metadata={"fasterdit": json.dumps(meta)})
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e3:.0f} kB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
