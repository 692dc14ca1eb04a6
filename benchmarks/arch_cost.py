"""What an architecture config costs before it is trained: its exported graphs and a training step, side by side.

Each config is the architecture's defaults with the overrides of a JSON file merged in, as
``stemcli train --config FILE`` merges them (``--config``, the first and reference config), and
``--variant NAME=JSON`` adds that config with more overrides merged in (nested objects merge key by
key: ``'small={"conv_bin": 384, "bass": {"bins": 64}}'``).  Each is built with random weights
(seed 0) and exported as ``stemcli export`` exports it (:func:`stemcli.export.export_model`: the
mask graph, and the post graph of a model with one).  Speed does not depend on the weights.  Then,
in ``--rounds`` interleaved rounds on one thread (the order reversed every other round), each on
the same generated part of ``--seconds`` (default 16.11 s, a part of a 30 s input with the
shipped card's 1.11 s of context, :mod:`stemcli.runtime`):

* ``graph``: the mask graph alone on the part's log-magnitudes (random, the shape the front end
  gives it), or for a waveform model its whole graph on the part;
* ``post``: the post graph's path (:func:`stemcli.wavepost.apply_post`: blocks, graph, update of
  the pair) on random stems of the part, for a model with a post graph;
* ``part``: the whole separation of the part as the runtime does it on one thread (STFT, mask
  graph, mask products and inverse STFTs, post graph);
* ``step`` (``--train-step``): one training step in torch (``--batch`` x 3 s excerpts of random
  audio, Adam, the trainer's loss), one thread, as ``stemcli train --threads 1`` steps.

Printed per config: parameters, the median milliseconds of each timing and its ratio to the
first config's.  Ratios from one run are what to compare; the machine's load moves the
milliseconds.

    .venv/bin/python benchmarks/arch_cost.py --config export/configs/mmdense37.json \\
        --variant 'cb384={"conv_bin": 384, "bass": {"bins": 64}}' --rounds 9 --train-step
"""

from __future__ import annotations

import argparse
import json
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
        ValueError: no ``=``, an empty name, JSON that does not parse or is not an object.
    """
    name, sep, body = text.partition("=")
    name = name.strip()
    if not sep or not name:
        raise ValueError(f"--variant {text!r:.60}: expected NAME=JSON, e.g. 'small={{\"conv_bin\": 384}}'")
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
    """One config, built (seed 0), exported into ``folder`` and loaded on one thread: its timed
    callables by timing name (``timed["part"]()`` returns the stems ``[shape=(1, sources,
    channels, samples)]`` of :attr:`mix`).

    Raises:
        ValueError: naming the config, if it cannot be built.
    """

    def __init__(self, name: str, config: dict[str, Any], folder: Path, seconds: float, batch: int,
                 train_step: bool) -> None:
        import onnxruntime as ort
        import torch

        from stemcli import spectral, wavepost
        from stemcli.export import _frontend, _post, export_model
        from stemcli.modelcard import post_path
        from stemcli.runtime import session_options, with_post
        from stemcli.train import archs

        self.name = name
        torch.manual_seed(0)
        try:
            model = archs.build(config).eval()
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"config {name}: cannot build it ({exc})") from exc
        self.params = sum(p.numel() for p in model.parameters())
        onnx_path = folder / f"{name}.onnx"
        export_model(model, onnx_path, int(config["channels"]))

        def session(path: Path) -> Any:
            return ort.InferenceSession(str(path), session_options(1), providers=["CPUExecutionProvider"])

        rng = np.random.default_rng(0)
        channels, rate = int(config["channels"]), int(config["sample_rate"])
        n_src = len(config["sources"])
        samples = int(round(seconds * rate))
        mix = (0.1 * rng.standard_normal((1, channels, samples))).astype(np.float32)
        self.mix = mix  # [shape=(1, channels, samples)]: the part every timing separates
        graph = session(onnx_path)
        in_name = graph.get_inputs()[0].name
        frontend, post = _frontend(model), _post(model)
        self.timed: dict[str, Callable[[], Any]] = {}
        if frontend is None:
            self.timed["graph"] = lambda: graph.run(None, {in_name: mix})
            base: Callable[[np.ndarray], np.ndarray] = lambda m: graph.run(None, {in_name: m})[0]
        else:
            frames = -(-samples // frontend["hop"]) + 1
            mag = (2.0 * rng.random((1, channels, frames, frontend["bins"]))).astype(np.float32)
            out_names = list(spectral.graph_outputs(frontend, n_src))
            self.timed["graph"] = lambda: graph.run(out_names, {in_name: mag})

            def masks(m: np.ndarray) -> Any:
                got = graph.run(out_names, {in_name: m})
                return got[0] if len(got) == 1 else tuple(got)

            base = lambda m: spectral.separate_with_masks(frontend, masks, m, n_src)  # noqa: E731
        run = base
        if post is not None:
            post_file = post_path(onnx_path)
            post_session = session(post_file)
            post_in = post_session.get_inputs()[0].name
            stems = (0.1 * rng.standard_normal((1, n_src, channels, samples))).astype(np.float32)
            sources = list(config["sources"])

            def post_only() -> Any:
                return wavepost.apply_post(post, lambda b: post_session.run(None, {post_in: b})[0], mix,
                                           stems.copy(), sources)

            self.timed["post"] = post_only
            run = with_post(base, post, sources, channels, post_session, post_file)
        self.timed["part"] = lambda: run(mix)
        if train_step:
            from stemcli.train.loop import training_loss

            net = archs.build(config)
            net.train()
            opt = torch.optim.Adam(net.parameters(), 1e-3)
            ref = 0.1 * torch.randn(batch, n_src, channels, 3 * rate, generator=torch.Generator().manual_seed(0))
            x = ref.sum(1)

            def step() -> None:
                opt.zero_grad()
                training_loss(net, x, ref, None).backward()
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
    ap.add_argument("--seconds", type=float, default=16.11, help="length of the timed part (default 16.11)")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--train-step", action="store_true", help="also time a training step (torch, one thread)")
    ap.add_argument("--batch", type=int, default=2, help="training step batch of 3 s excerpts (default 2)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.seconds <= 0 or args.batch < 1:
        ap.error("--rounds and --batch must be >= 1 and --seconds > 0")
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

    print(f"{args.seconds:g} s part, one thread, median of {args.rounds} interleaved rounds; ratio to {candidates[0].name}")
    keys = [k for k in TIMINGS if any(k in r for r in rows.values())]
    print(f"{'config':<16} {'params':>9} " + " ".join(f"{k + ' ms':>10} {'x':>6}" for k in keys))
    for name, r in rows.items():
        cells = [f"{r[k]['ms']:>10.1f} {r[k]['ratio']:>6.3f}" if k in r and r[k]["ratio"] is not None
                 else f"{'-':>10} {'-':>6}" for k in keys]
        print(f"{name:<16} {r['parameters'] / 1e6:>8.2f}M " + " ".join(cells))
    if args.json:
        payload = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "seconds": args.seconds,
                   "rounds": args.rounds, "configs": configs, "results": rows}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
