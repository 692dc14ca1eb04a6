"""Train only the "wave" branch of an mmdense model on top of a finished run's frozen mask net.

An early test of the waveform correction (``stemcli_mmdense.model.WaveCorrection``): the run's
weights are loaded into the architecture of ``--config`` (its config plus a ``"wave"`` entry; the
branch starts at zero), everything else is frozen (BatchNorm in eval mode), and only the branch
is trained, with the L1 loss on the waveforms and the trainer's data and augmentation, for
``--minutes`` (or ``--steps``, whichever ends first).  The result is written as a run folder (``config.json``, ``best.pt``) that
``benchmarks/run_eval.py`` scores.  It is not the issue's comparison (the mask net trained for
its own budget first); the from-scratch run of the same config is.

    .venv/bin/python export/finetune_wave.py --run /work/runs/mmdense27 --config export/configs/mmdense32.json \\
        --data /work/data/pop_v2 --minutes 25 --out /work/runs/mmdense27w
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="finished mmdense run (config.json, best.pt)")
    ap.add_argument("--config", type=Path, required=True, help="architecture overrides with a \"wave\" entry")
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--minutes", type=float, required=True)
    ap.add_argument("--steps", type=int, default=None, help="stop after this many steps if the minutes last longer")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    from stemcli.data.datasets import StemDataset
    from stemcli.export import load_run
    from stemcli.train import archs
    from stemcli.train.loop import merge_config, read_config_overrides, weighted_l1

    torch.set_num_threads(1)
    if args.steps is not None and args.steps < 1:
        print(f"error: --steps must be >= 1, got {args.steps}", file=sys.stderr)
        return 1
    if args.out.exists():
        print(f"error: {args.out} exists (not overwritten)", file=sys.stderr)
        return 1
    try:
        run_cfg, base_model, info = load_run(args.run)
        cfg = merge_config(run_cfg["model"], read_config_overrides(args.config))
        model = archs.build(cfg)
    except ValueError as exc:
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1
    if model.wave is None:
        print(f"error: {args.config}: no \"wave\" branch (wave.hidden > 0) in the config", file=sys.stderr)
        return 1
    missing, unexpected = model.load_state_dict(base_model.state_dict(), strict=False)
    if unexpected or any(not k.startswith("wave.") for k in missing):
        print(f"error: {args.config}: the architecture differs from {args.run}'s beyond the branch", file=sys.stderr)
        return 1
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    wave = model.wave
    for p in wave.parameters():
        p.requires_grad_(True)
    opt = torch.optim.Adam(wave.parameters(), lr=args.lr)
    data = StemDataset(args.data, "train", list(cfg["sources"]), seconds=args.seconds,
                       sample_rate=int(cfg["sample_rate"]), augment=True, remix_prob=0.5, seed=args.seed,
                       channels=int(cfg["channels"]))
    rng = np.random.default_rng(args.seed)
    t0, step, losses = time.time(), 0, []
    while time.time() - t0 < args.minutes * 60 and (args.steps is None or step < args.steps):
        pairs = [data.sample(rng) for _ in range(args.batch)]
        mix = torch.from_numpy(np.stack([m for m, _ in pairs]))
        ref = torch.from_numpy(np.stack([s for _, s in pairs]))
        with torch.no_grad():  # the frozen mask model's stems, without building a graph
            base = model.mask_stems(mix)
        loss = weighted_l1(wave(mix, base), ref, None)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        losses.append((loss.item(), weighted_l1(base, ref, None).item()))
        if step % 200 == 0:
            a, b = np.mean(losses[-200:], axis=0)
            print(f"step {step} loss {a:.5f} (mask net alone {b:.5f}, ratio {a / b:.4f}) "
                  f"{(time.time() - t0) / 60:.1f} min", flush=True)
    args.out.mkdir(parents=True)
    (args.out / "config.json").write_text(json.dumps(
        {"model": cfg, "base_run": str(args.run), "base_weights": info,
         "finetune": {"minutes": args.minutes, "steps": step, "batch": args.batch, "seconds": args.seconds,
                      "lr": args.lr, "seed": args.seed, "trained": "wave branch only"}}, indent=1))
    torch.save({"model": model.state_dict(), "step": step}, args.out / "best.pt")
    print(f"saved {args.out} after {step} steps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
