"""What an architecture config costs before it is trained: its exported graphs and a training step, side by side.

Each config is the architecture's defaults with the overrides of a JSON file merged in, as
``stemcli train --config FILE`` merges them (``--config``, the first and reference config), and
``--variant NAME=JSON`` adds that config with more overrides merged in (nested objects merge key by
key: ``'small={"conv_bin": 384, "bass": {"bins": 64}}'``).  Each is built with random weights
(seed 0) and exported by ``stemcli export``'s code (:func:`stemcli.export.export_run`, its parity
check against torch included) to a temporary card, which :class:`stemcli.runtime.OnnxSeparator`
loads as the runtime does, on one thread.  Speed does not depend on the weights.  Then, in
``--rounds`` interleaved rounds (the order reversed every other round, after two warm-up calls),
each config on the same generated stereo input of ``--seconds`` (default 16 s: the longest input
the runtime separates as one part; a 30 s input runs as two parts of 16.11 s with the shipped
card's context):

* ``graph``: the mask graph alone on log-magnitudes of the input's shape (random), for a model with
  an STFT front end (a waveform model's graph is its whole separation: see ``part``);
* ``post``: the post graph's path (:func:`stemcli.wavepost.apply_post`: blocks, graph, update of
  the pair) on random stems of the input, for a model with a post graph;
* ``part``: the whole separation of the input (``OnnxSeparator.separate``: STFT, mask graph, mask
  products and inverse STFTs, post graph);
* ``step`` (``--train-step``): one training step in torch (``--batch`` x 3 s excerpts of random
  audio, the trainer's loss, gradient clipping and Adam; the data sampling left out), one thread,
  as ``stemcli train --threads 1`` steps.

Printed per config: parameters, the median milliseconds of each timing and its ratio to the
first config's (``-`` where the first config has no such timing).  Ratios from one run are what
to compare; the machine's load moves the milliseconds.

    .venv/bin/python benchmarks/arch_cost.py --config export/configs/mmdense37.json \\
        --variant 'cb384={"conv_bin": 384, "bass": {"bins": 64}}' --rounds 9 --train-step
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

TIMINGS = ("graph", "post", "part", "step")


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """``NAME=JSON`` -> ``(NAME, overrides)``.

    Raises:
        ValueError: no ``=``, an empty name or one that is not a plain file name, JSON that does
            not parse or is not an object.
    """
    name, sep, body = text.partition("=")
    name = name.strip()
    if not sep or not name:
        raise ValueError(f"--variant {text!r:.60}: expected NAME=JSON, e.g. 'small={{\"conv_bin\": 384}}'")
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*", name):
        raise ValueError(f"--variant {name!r:.40}: a NAME holds letters, digits and _ . + - only (it names files)")
    try:
        obj = json.loads(body)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--variant {name}: not valid JSON ({exc})") from exc
    if not isinstance(obj, dict):
        raise ValueError(f"--variant {name}: the overrides must be a JSON object, got {type(obj).__name__}")
    return name, obj


def build_configs(architecture: str, config: Path | None, variants: list[str]) -> dict[str, dict[str, Any]]:
    """name -> complete config: the defaults with ``config``'s overrides (name: the file's stem,
    or ``default``), then each variant's on top of that.

    Raises:
        ValueError: an unreadable config file, a bad variant, or a repeated name.
    """
    from stemcli.train import archs
    from stemcli.train.loop import merge_config, read_config_overrides

    base = archs.default_config(architecture)
    if config is not None:
        base = merge_config(base, read_config_overrides(config))
    out = {config.stem if config is not None else "default": base}
    for text in variants:
        name, overrides = parse_variant(text)
        if name in out:
            raise ValueError(f"--variant {name}: the name is already taken")
        out[name] = merge_config(base, overrides)
    return out


class Candidate:
    """One config, built with random weights (seed 0), exported by :func:`stemcli.export.export_run`
    into ``folder`` (the parity check against torch included) and loaded as the runtime loads a
    card, on one thread: its timed callables by timing name.  ``timed["part"]()`` returns the
    stems ``[shape=(1, sources, channels, samples)]`` of :attr:`mix`.

    Raises:
        ValueError: naming the config, if it cannot be built or exported.
    """

    def __init__(self, name: str, config: dict[str, Any], folder: Path, seconds: float, batch: int,
                 train_step: bool) -> None:
        import onnxruntime as ort
        import torch

        from stemcli import wavepost
        from stemcli.export import ExportError, export_run
        from stemcli.modelcard import model_file
        from stemcli.runtime import OnnxSeparator, session_options
        from stemcli.train import archs

        self.name = name
        run = folder / name
        run.mkdir(parents=True)
        torch.manual_seed(0)
        try:
            model = archs.build(config)
            (run / "config.json").write_text(json.dumps({
                "model": config, "data": {"root": str(folder / "no-data")}, "hyperparameters": {},
                "commands": ["benchmarks/arch_cost.py"]}))
            torch.save({"model": model.state_dict(), "step": 0}, run / "best.pt")
            export_run(run, run / f"{name}.onnx", command="benchmarks/arch_cost.py")
            sep = OnnxSeparator(run / f"{name}.json", threads=1)
        except (ValueError, KeyError, TypeError, RuntimeError, ExportError) as exc:
            raise ValueError(f"config {name}: cannot build or export it ({exc})") from exc
        self.params = sum(p.numel() for p in model.parameters())

        rng = np.random.default_rng(0)
        channels, n_src = sep.channels, len(sep.sources)
        samples = int(round(seconds * sep.sample_rate))
        mix = (0.1 * rng.standard_normal((1, channels, samples))).astype(np.float32)
        self.mix = mix  # [shape=(1, channels, samples)]: the input every timing works on
        self.timed: dict[str, Callable[[], Any]] = {}
        if sep.frontend is not None:  # a waveform model's graph is its whole part: timed once, as the part
            graph = sep.session  # the separator's own mask-graph session (one thread)
            in_name = graph.get_inputs()[0].name
            frames = -(-samples // sep.frontend["hop"]) + 1
            mag = (2.0 * rng.random((1, channels, frames, sep.frontend["bins"]))).astype(np.float32)
            self.timed["graph"] = lambda: graph.run(None, {in_name: mag})
        if sep.post is not None:
            post_session = ort.InferenceSession(str(model_file(sep.card, "post")), session_options(1),
                                                providers=["CPUExecutionProvider"])
            post_in = post_session.get_inputs()[0].name
            # corrected in place, the same stems every call: the cost does not depend on their values
            stems = (0.1 * rng.standard_normal((1, n_src, channels, samples))).astype(np.float32)
            sources = list(sep.sources)
            self.timed["post"] = lambda: wavepost.apply_post(
                sep.post, lambda b: post_session.run(None, {post_in: b})[0], mix, stems, sources)
        self.timed["part"] = lambda: sep.separate(mix)
        if train_step:
            from stemcli.train.loop import GRAD_CLIP, training_loss

            net = model.train()  # the exported copy was rebuilt from best.pt: this one is free to train
            opt = torch.optim.Adam(net.parameters(), 1e-3)
            ref = 0.1 * torch.randn(batch, n_src, channels, 3 * sep.sample_rate,
                                    generator=torch.Generator().manual_seed(0))
            x = ref.sum(1)

            def step() -> None:  # the trainer's step (stemcli/train/loop.py), without the data sampling
                loss = training_loss(net, x, ref, None)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(net.parameters(), GRAD_CLIP)
                opt.step()

            self.timed["step"] = step


def time_rounds(candidates: list[Candidate], rounds: int, warmup: int = 2) -> dict[str, dict[str, list[float]]]:
    """Seconds of each candidate's timings over ``rounds`` interleaved rounds (the order of the
    candidates reversed every other round), after ``warmup`` untimed calls of each."""
    for c in candidates:
        for f in c.timed.values():
            for _ in range(warmup):
                f()
    times: dict[str, dict[str, list[float]]] = {c.name: {k: [] for k in c.timed} for c in candidates}
    for r in range(rounds):
        for c in candidates if r % 2 == 0 else candidates[::-1]:
            for key, f in c.timed.items():
                t0 = time.perf_counter()
                f()
                times[c.name][key].append(time.perf_counter() - t0)
    return times


def summarise(candidates: list[Candidate], times: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, Any]]:
    """Per candidate: parameters, and per timing its median ms and the ratio to the first candidate's."""
    first = candidates[0].name
    out: dict[str, dict[str, Any]] = {}
    for c in candidates:
        row: dict[str, Any] = {"parameters": c.params}
        for key, values in times[c.name].items():
            ms = 1000.0 * statistics.median(values)
            ref = times[first].get(key)
            row[key] = {"ms": ms, "ratio": ms / (1000.0 * statistics.median(ref)) if ref else None,
                        "seconds": values}
        out[c.name] = row
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--architecture", default="mmdense")
    ap.add_argument("--config", type=Path, help="JSON overrides of the reference config (as stemcli train --config)")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=JSON",
                    help="another config: the reference with these overrides merged in (repeatable)")
    ap.add_argument("--seconds", type=float, default=16.0,
                    help="length of the timed input (default 16: the longest the runtime runs as one part)")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--train-step", action="store_true", help="also time a training step (torch, one thread)")
    ap.add_argument("--batch", type=int, default=2,
                    help="training step batch of 3 s excerpts (default 2, the shipped recipe's; the trainer's default is 4)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if args.rounds < 1 or not (math.isfinite(args.seconds) and 0 < args.seconds <= 3600) or args.batch < 1:
        ap.error("--rounds and --batch must be >= 1, --seconds in (0, 3600]")
    try:
        configs = build_configs(args.architecture, args.config, args.variant)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="stemcli-arch-cost-") as tmp:
        try:
            candidates = [Candidate(n, c, Path(tmp), args.seconds, args.batch, args.train_step)
                          for n, c in configs.items()]
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        times = time_rounds(candidates, args.rounds)
    rows = summarise(candidates, times)

    print(f"{args.seconds:g} s input, one thread, median of {args.rounds} interleaved rounds; ratio to {candidates[0].name}")
    keys = [k for k in TIMINGS if any(k in r for r in rows.values())]
    print(f"{'config':<16} {'params':>9} " + " ".join(f"{k + ' ms':>10} {'x':>6}" for k in keys))
    for name, r in rows.items():
        cells = [f"{r[k]['ms']:>10.1f} " + (f"{r[k]['ratio']:>6.3f}" if r[k]["ratio"] is not None else f"{'-':>6}")
                 if k in r else f"{'-':>10} {'-':>6}" for k in keys]
        print(f"{name:<16} {r['parameters'] / 1e6:>8.2f}M " + " ".join(cells))
    if args.json:
        from stemcli.modelcard import command_line

        payload = {"command": command_line(None if argv is None else ["benchmarks/arch_cost.py", *argv]),
                   "seconds": args.seconds,
                   "rounds": args.rounds, "configs": configs, "results": rows}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
