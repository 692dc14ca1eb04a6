"""Speed: stemcli's default model (onnxruntime and torch) vs Open-Unmix and HTDemucs, one run.

All systems separate the same generated 30 s stereo 44.1 kHz input in the same process with
2 threads (``torch.set_num_threads``; onnxruntime's ``intra_op_num_threads``).  Each system
is warmed up once, then the systems are timed in ``--repeats`` interleaved rounds (each runs
once per round, so a drift in the machine's speed affects all of them alike); the median wall
time is reported with the real-time factor (audio seconds / wall seconds) and the ratios the
issue sets as targets.

    .venv/bin/python benchmarks/speed.py                      # default model (mmdense)
    .venv/bin/python benchmarks/speed.py --model hpss --systems onnx,umx --repeats 1
    .venv/bin/python benchmarks/speed.py --json benchmarks/results/speed.json

Open-Unmix and HTDemucs run with random weights (speed does not depend on weights); see
``benchmarks/_baselines.py`` for their exact configuration and the torchaudio stand-in.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _baselines  # noqa: E402

from stemcli import allocator  # noqa: E402  (stdlib only at import)

SR = 44100
TARGETS = {
    # name: (numerator system, denominator system or None for real time, target, description)
    "realtime": ("onnx", None, 20.0, "stemcli onnxruntime, x real time"),
    "vs_umx": ("onnx", "umx", 12.0, "stemcli onnxruntime vs Open-Unmix (x faster)"),
    "vs_htdemucs": ("onnx", "htdemucs", 35.0, "stemcli onnxruntime vs HTDemucs (x faster)"),
    "onnx_vs_torch": ("onnx", "torch", 1.5, "stemcli onnxruntime vs torch (x faster)"),
}
ALL_SYSTEMS = ("onnx", "torch", "umx", "htdemucs")


def make_input(seconds: float, seed: int = 0) -> np.ndarray:
    """A music-like stereo test signal: [shape=(2, seconds*44100)] float32 (speed does not depend on it)."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * SR))
    t = np.arange(n) / SR
    tones = sum(np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi)) for f in (55.0, 220.0, 277.2, 329.6, 880.0))
    beat = (np.sin(2 * np.pi * 2 * t) > 0.95) * rng.standard_normal(n)
    left = 0.05 * tones + 0.2 * beat + 0.01 * rng.standard_normal(n)
    right = 0.05 * np.roll(tones, 31) + 0.2 * beat + 0.01 * rng.standard_normal(n)
    return np.stack([left, right]).astype(np.float32)


def stemcli_system(model: str, backend: str, threads: int) -> tuple[Callable[[np.ndarray], Any], dict[str, Any]]:
    """stemcli's full in-memory path (``stemcli.api.separate``: chunking, model, overlap-add)."""
    from stemcli import api
    from stemcli.plugins import SeparatorError

    attempts = [
        ({"threads": threads}, backend, f"threads={threads} passed to the separator"),
        ({}, backend, "separator takes no thread option (onnxruntime default: one thread per physical core)"),
        ({}, None, f"separator takes no backend option: '{backend}' not applied"),
    ]
    for options, be, threads_note in attempts:
        try:
            sep = api.get_separator(model, be, **options)
            break
        except SeparatorError as exc:
            if "bad options" not in str(exc) or (options, be) == ({}, None):
                raise
    session = _find_session(sep)
    if session is not None:
        opts = session.get_session_options()
        threads_note += f"; onnxruntime intra_op_num_threads={opts.intra_op_num_threads}"

    def run(mix: np.ndarray) -> Any:
        return api.separate(mix, SR, model=sep)

    info = {
        "system": f"stemcli {sep.name or model} ({backend})",
        "model": str(model),
        "backend": backend,
        "sources": list(sep.sources),
        "segment": float(sep.segment),
        "threads": threads_note,
    }
    return run, info


def _find_session(sep: Any) -> Any:
    """The onnxruntime InferenceSession inside a separator, if any (for the thread report)."""
    for value in list(vars(sep).values()) + [getattr(sep, "runner", None), getattr(sep, "backend_impl", None)]:
        if value is None:
            continue
        if type(value).__name__ == "InferenceSession":
            return value
        inner = getattr(value, "session", None)
        if type(inner).__name__ == "InferenceSession":
            return inner
    return None


def time_systems(runs: dict[str, Callable[[np.ndarray], Any]], mix: np.ndarray, repeats: int) -> dict[str, dict[str, Any]]:
    """One warm-up each, then ``repeats`` rounds in which every system runs once, in turn
    (interleaved: a machine whose speed drifts during the run slows every system alike, so the
    ratios hold even when the absolute times move); median wall seconds per system."""
    warm: dict[str, float] = {}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for name, run in runs.items():
        t0 = time.perf_counter()
        run(mix)
        warm[name] = time.perf_counter() - t0
    for _ in range(repeats):
        for name, run in runs.items():
            t0 = time.perf_counter()
            run(mix)
            times[name].append(time.perf_counter() - t0)
    out = {}
    for name in runs:
        median = statistics.median(times[name])
        out[name] = {"warmup_seconds": warm[name], "seconds": times[name], "median_seconds": median,
                     "realtime": mix.shape[-1] / SR / median}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="mmdense", help="stemcli model: name, card .json or .onnx (default mmdense)")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--systems", default=",".join(ALL_SYSTEMS), help=f"subset of {','.join(ALL_SYSTEMS)}")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--update-card", type=Path, help="merge the numbers into this model card's 'metrics.speed'")
    ap.add_argument("--allocator", choices=allocator.CHOICES, default="auto",
                    help="memory allocator of this process, so of all systems (default auto: tcmalloc "
                         "if installed, as `stemcli separate` runs; see stemcli/allocator.py)")
    args = ap.parse_args(argv)
    try:  # re-runs this script under it if needed
        allocator.ensure_script(args.allocator, __file__, argv)
    except (ValueError, RuntimeError) as exc:
        ap.error(str(exc))
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in systems if s not in ALL_SYSTEMS]
    if unknown:
        ap.error(f"unknown system(s) {unknown}; choose from {ALL_SYSTEMS}")
    if args.repeats < 1 or args.seconds <= 0:
        ap.error("--repeats must be >= 1 and --seconds > 0")

    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    mix = make_input(args.seconds)
    stand_in = _baselines.torchaudio_stand_in() if {"umx", "htdemucs"} & set(systems) else "not needed"
    print(f"input: {args.seconds:g} s stereo {SR} Hz generated signal (seed 0); {args.threads} threads; "
          f"1 warm-up + median of {args.repeats}; torch {torch.__version__}, {os.cpu_count()} CPUs; "
          f"allocator {allocator.active()}")
    print(f"torchaudio for openunmix/demucs imports: {stand_in}")

    builders: dict[str, Callable[[], tuple[Callable[[np.ndarray], Any], dict[str, Any]]]] = {
        "onnx": lambda: stemcli_system(args.model, "onnx", args.threads),
        "torch": lambda: stemcli_system(args.model, "torch", args.threads),
        "umx": lambda: _baselines.openunmix_umxhq(niter=1),
        "htdemucs": lambda: _baselines.htdemucs(segment=7.8, overlap=0.25),
    }
    results: dict[str, dict[str, Any]] = {}
    runs: dict[str, Callable[[np.ndarray], Any]] = {}
    for name in systems:
        try:
            runs[name], results[name] = builders[name]()
        except Exception as exc:  # report and go on: one missing system should not hide the others
            print(f"{name}: cannot build: {type(exc).__name__}: {exc}", file=sys.stderr)
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
    if not runs:
        sys.exit("error: no system could be built (see the errors above)")
    print(f"timing {', '.join(results[n]['system'] for n in runs)}, interleaved ...", flush=True)
    for name, timing in time_systems(runs, mix, args.repeats).items():
        results[name].update(timing)
    del runs

    print()
    print(f"{'system':<44} {'seconds':>8} {'x real time':>12}")
    for name in systems:
        r = results[name]
        if "error" in r:
            print(f"{name:<44} {'error':>8}")
            continue
        print(f"{r['system']:<44} {r['median_seconds']:>8.2f} {r['realtime']:>12.1f}")

    checks = {}
    print()
    print(f"{'check':<48} {'value':>8} {'target':>8}  result")
    for key, (num, den, target, label) in TARGETS.items():
        if num not in results or "error" in results[num] or (den and (den not in results or "error" in results[den])):
            continue
        value = results[num]["realtime"] if den is None else results[den]["median_seconds"] / results[num]["median_seconds"]
        ok = value >= target
        checks[key] = {"label": label, "value": value, "target": target, "pass": ok}
        print(f"{label:<48} {value:>8.2f} {'>= ' + format(target, 'g'):>8}  {'PASS' if ok else 'FAIL'}")

    if args.json:
        payload = {
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "input": {"seconds": args.seconds, "sample_rate": SR, "channels": 2, "seed": 0},
            "threads": args.threads,
            "repeats": args.repeats,
            "allocator": allocator.active(),
            "torchaudio": stand_in,
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "processor": _cpu_name()},
            "versions": _versions(),
            "results": results,
            "checks": checks,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=1) + "\n")
        print(f"\nwrote {args.json}")
    if args.update_card:
        from stemcli.export import update_metrics

        update_metrics(args.update_card, {"speed": {
            "input": f"{args.seconds:g} s stereo 44.1 kHz, {args.threads} threads, median of {args.repeats}",
            "machine": f"{os.cpu_count()} CPUs, {_cpu_name()}",
            "realtime": {k: round(v["realtime"], 2) for k, v in results.items() if "realtime" in v},
            "checks": {k: {"value": round(c["value"], 2), "target": c["target"], "pass": c["pass"]}
                       for k, c in checks.items()},
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
        }})
        print(f"updated {args.update_card} (metrics.speed)")
    failed = [k for k, r in results.items() if "error" in r]
    if failed:
        print(f"\nnot measured: {', '.join(failed)} (see the errors above)", file=sys.stderr)
    return 0 if checks and not failed and all(c["pass"] for c in checks.values()) else 1


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("stemcli", "torch", "onnxruntime", "numpy", "openunmix", "demucs"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


if __name__ == "__main__":
    sys.exit(main())
