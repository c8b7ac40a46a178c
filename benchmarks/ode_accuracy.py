"""ODE sampler accuracy against a closed form, and against the references' integrators.

For Gaussian data the exact velocity of every path is known in closed form, and so is the exact
endpoint of the probability-flow ODE. This measures the endpoint error (max over 256 samples, float64)
of fasterdit's Euler and Heun, each with its last-step variants, on the rectified flow (SiT "Linear",
``flow-linear``) and on SiT's GVP path (``flow-cosine``), and their distance to the references'
integrators on the same grid: SiT's Euler ODE (in SiT's time, written out here) and torchdiffeq's
fixed-grid ``heun2`` (what SiT's ``--sampling-method heun2`` runs). No network, no training: seconds.

    python benchmarks/ode_accuracy.py
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

F64 = torch.float64
MU = torch.tensor([1.5, -0.5], dtype=F64)
S = torch.tensor([0.5, 0.8], dtype=F64)


def velocity_fn(sched):
    """The exact velocity dx/dt of x_t = α·x + σ·ε for x ~ N(MU, diag(S²))."""

    def fn(x, t):
        t = t[:1].to(F64)
        a, sg, da, ds = (f(t)[:, None] for f in (sched.alpha, sched.sigma, sched.d_alpha, sched.d_sigma))
        r2 = a * a * S * S + sg * sg
        x0 = MU + a * S * S / r2 * (x - a * MU)
        eps = sg / r2 * (x - a * MU)
        return da * x0 + ds * eps

    return fn


def exact_endpoint(sched, x1):
    t = torch.ones(1, dtype=F64)
    a, sg = sched.alpha(t), sched.sigma(t)
    return MU + S * (x1 - a * MU) / torch.sqrt(a * a * S * S + sg * sg)


def sit_euler(fn, x1, steps):
    """SiT's Euler ODE: s = linspace(0, 1, steps + 1) from noise to data, x += Δs·(−dx/dt)."""
    x = x1.clone()
    grid = torch.linspace(0.0, 1.0, steps + 1, dtype=F64)
    for k in range(steps):
        x = x + float(grid[k + 1] - grid[k]) * -fn(x, (1.0 - grid[k]).expand(len(x)))
    return x


def main(argv: list[str] | None = None) -> int:
    from torchdiffeq import odeint

    from fasterdit.diffusion.sampling_ode import euler, heun
    from fasterdit.diffusion.schedules import get_schedule

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=None)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    out = Path(args.out or (tempfile.mkdtemp(prefix="fasterdit-ode-") if args.quick else common.DOCS))
    out.mkdir(parents=True, exist_ok=True)
    facts = common.machine_facts()
    x1 = torch.randn(256, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    rows, data = [], []
    for name in ("flow-linear", "flow-cosine"):
        sched = get_schedule(name)
        fn = velocity_fn(sched)
        exact = exact_endpoint(sched, x1)
        for steps in (5, 10, 25) if not args.quick else (5,):
            grid = torch.linspace(1.0, 0.0, steps + 1, dtype=F64)
            heun2 = odeint(lambda t, x, fn=fn: fn(x, t.expand(len(x))), x1, grid, method="heun2")[-1]
            sit = sit_euler(fn, x1, steps)
            for method, last, res, ref, ref_name in (
                ("euler", "euler", euler(fn, x1, sched, "velocity", steps=steps), sit, "SiT Euler"),
                ("euler", "x0", euler(fn, x1, sched, "velocity", steps=steps, last_step="x0"), sit,
                 "SiT Euler"),
                ("heun", "heun", heun(fn, x1, sched, "velocity", steps=steps), heun2, "torchdiffeq heun2"),
                ("heun", "x0", heun(fn, x1, sched, "velocity", steps=steps, last_step="x0"), heun2,
                 "torchdiffeq heun2"),
            ):  # fmt: skip
                err = float((res.x - exact).abs().max())
                dist = float((res.x - ref).abs().max())
                data.append(dict(path=name, steps=steps, sampler=method, last_step=last, nfe=res.nfe,
                                 error=err, reference=ref_name, distance_to_reference=dist))  # fmt: skip
                rows.append([name, steps, method, last, res.nfe, f"{err:.3g}", ref_name, f"{dist:.2g}"])
    common.write_json(out / "ode_accuracy.json", dict(rows=data, facts=facts))
    text = "\n".join(
        [
            *common.report_header(
                "ODE samplers: accuracy and agreement with the references", __file__, facts
            ),
            "## Endpoint error on Gaussian data (closed-form velocity, float64, 256 samples)",
            "",
            "`error`: max |x̂ − x_exact| of the probability-flow ODE's endpoint. `distance`: "
            "max |x̂ − x_ref| to the reference integrator on the same grid. Defaults: Euler's last step "
            "is an Euler step (`euler`), Heun's is a full Heun step into t = 0 (`heun`, 2N evaluations) "
            "on these paths; `x0` is the denoising jump to x̂₀ (the previous behaviour of both).",
            "",
            common.md_table(
                ["path", "steps", "sampler", "last step", "NFE", "error", "reference", "distance"], rows
            ),
            "",
        ]
    )
    (out / "ode_accuracy.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
