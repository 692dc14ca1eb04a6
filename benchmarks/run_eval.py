"""Score training runs in torch, without exporting them: museval (BSS Eval v4) on a split.

For comparing training runs before any is exported (a pair of runs then goes through the same
path, whatever its graphs would be): each run's ``config.json`` and
``best.pt`` (``checkpoint.pt`` and its weight average without one, as ``stemcli export`` takes
them) are rebuilt in torch and run on each whole track at once (no time parts, so no seams),
one thread unless ``--threads``.  Writes one ``stemcli evaluate --json`` file per run, which
``stemcli compare`` reads.

    .venv/bin/python benchmarks/run_eval.py --data /work/data/pop_v2 --tracks 16 \\
        base=/work/runs/mmdense27 wave=/work/runs/mmdense32 --json-dir /work/runs/torch_eval
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from stemcli.plugins import Separator  # noqa: E402


class RunSeparator(Separator):
    """A training run's torch model behind the :class:`~stemcli.plugins.Separator` interface;
    each call separates the whole input at once.

    Raises:
        ValueError: naming the run folder: not a run, or no weights.
    """

    segment = 3600.0  # a whole track per call
    overlap = 0.0

    def __init__(self, run_dir: Path) -> None:
        from stemcli.export import load_run

        run_cfg, self.model, self.weights = load_run(run_dir)
        cfg = run_cfg["model"]
        self.sources = tuple(cfg["sources"])
        self.sample_rate, self.channels = int(cfg["sample_rate"]), int(cfg["channels"])
        self.name = f"run:{run_dir}"

    def separate(self, mix: np.ndarray) -> np.ndarray:
        """[shape=(batch, channels, time)] -> [shape=(batch, sources, channels, time)] float32."""
        import torch

        with torch.inference_mode():
            return self.model(torch.from_numpy(np.ascontiguousarray(mix, np.float32))).numpy()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", metavar="NAME=RUN_DIR")
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--split", default="test")
    ap.add_argument("--tracks", type=int, default=None, help="only the first N tracks")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json-dir", type=Path, required=True, help="writes NAME.json here (stemcli evaluate's format)")
    args = ap.parse_args(argv)
    if args.threads < 1:
        ap.error(f"--threads must be >= 1, got {args.threads}")
    import torch

    from stemcli.evaluate import EvaluationError, evaluate, write_json
    from stemcli.plugins import SeparatorError

    torch.set_num_threads(args.threads)
    pairs = []
    for item in args.runs:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            ap.error(f"expected NAME=RUN_DIR, got {item!r}")
        pairs.append((name, Path(path)))
    args.json_dir.mkdir(parents=True, exist_ok=True)
    for name, run in pairs:
        try:
            sep = RunSeparator(run)
            print(f"{name}: {run} ({sep.weights['weights']}, step {sep.weights['step']})")
            result = evaluate(sep, args.data, split=args.split, tracks=args.tracks, progress=False)  # prints the table
        except (ValueError, RuntimeError, EvaluationError, SeparatorError) as exc:  # RuntimeError: weights vs config
            print(f"error: {name}: {str(exc).splitlines()[0]}", file=sys.stderr)
            return 1
        result["run"] = {"name": name, "dir": str(run), **sep.weights}
        print(f"-> {write_json(result, args.json_dir / f'{name}.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
