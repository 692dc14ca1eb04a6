"""The ``stemcli`` command line: a thin Click shell over :mod:`stemcli.api`.

Heavy modules (numpy, onnxruntime, torch) are imported inside the commands, so
``stemcli --help`` stays fast and never imports torch.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from stemcli import __version__
from stemcli.train import PRECISIONS
from stemcli.train import RESUMABLE as TRAIN_DEFAULTS


def _fail(exc: BaseException) -> click.ClickException:
    return click.ClickException(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)


def _stems_option(value: str | None) -> list[str] | None:
    if not value:
        return None
    return [s.strip() for s in value.split(",") if s.strip()]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="stemcli")
def cli() -> None:
    """Music source separation on a plain CPU: stems from songs, offline."""


@cli.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-m", "--model", default=None, help="Separator name (see `stemcli list`) or a model card .json/.onnx. Default: the shipped 4-stem model.")
@click.option("-o", "--outdir", default="separated", show_default=True, type=click.Path(path_type=Path), help="Output folder.")
@click.option("--stems", default=None, help="Comma-separated stems to write (default: all).")
@click.option("--format", "fmt", type=click.Choice(["wav", "flac"]), default="wav", show_default=True)
@click.option("--bit-depth", type=click.Choice(["16", "24", "32"]), default="16", show_default=True, help="32 = float (wav only).")
@click.option("--template", default="{track}/{stem}.{ext}", show_default=True, help="Output path under OUTDIR; fields {track} {stem} {ext} {model}.")
@click.option("--segment", type=float, default=None, help="Chunk length in seconds (default: the model's).")
@click.option("--overlap", type=float, default=None, help="Chunk overlap fraction in [0, 1) (default: the model's; 0.25, or 0.01 for models fed context).")
@click.option("--backend", type=click.Choice(["onnx", "torch"]), default=None, help="Runtime for model-based separators (default onnx).")
@click.option("--wiener", type=int, default=0, show_default=True, help="Multichannel Wiener post-filter EM iterations (0 = off).")
@click.option("--force", is_flag=True, help="Overwrite existing stems.")
@click.option("-j", "--jobs", type=int, default=1, show_default=True, help="Files processed in parallel.")
@click.option("--distributed/--no-distributed", default=None, help="Fan out over MPI ranks (automatic under mpiexec with more than one rank).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or per-file lines.")
def separate(inputs, model, outdir, stems, fmt, bit_depth, template, segment, overlap, backend, wiener, force, jobs, distributed, quiet) -> None:
    """Separate audio files or folders (recursively) into stems.

    Writes OUTDIR/{track}/{stem}.{ext} (the MUSDB layout) at the input's sample rate and
    channel count.  Files whose stems all exist are skipped unless --force.
    """
    from stemcli.batch import BatchOptions, run_batch
    from stemcli.plugins import SeparatorError

    opts = BatchOptions(
        model=model, backend=backend, outdir=outdir, stems=_stems_option(stems), fmt=fmt, bit_depth=int(bit_depth),
        template=template, segment=segment, overlap=overlap, force=force, jobs=jobs, progress=not quiet,
        wiener=wiener,
    )
    runner, root = run_batch, True
    if distributed is not False:
        from stemcli.distributed import is_root_rank, mpi_world_size

        if distributed or mpi_world_size() > 1:
            from stemcli.distributed import run_batch_distributed as runner  # type: ignore[no-redef]

            root = is_root_rank()  # only rank 0 speaks; every rank exits with the same code

    def report(o) -> None:
        if o.status == "failed":
            click.echo(f"error: {o.message}", err=True)
        elif not quiet:
            click.echo(f"{o.status}: {o.message}", err=True)

    try:
        outcomes = runner(list(inputs), opts, report)
    except (SeparatorError, ValueError, OSError) as exc:
        if not root:
            sys.exit(1)
        raise _fail(exc) from None
    failed = sum(o.status == "failed" for o in outcomes)
    if root and (not quiet or failed):
        counts = {s: sum(o.status == s for o in outcomes) for s in ("done", "skipped", "failed")}
        click.echo(", ".join(f"{n} {s}" for s, n in counts.items()), err=True)
    if not outcomes:
        if not root:
            sys.exit(1)
        raise click.ClickException("no audio files found in " + ", ".join(map(str, inputs)))
    if failed:
        sys.exit(1)


@cli.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_cmd(as_json: bool) -> None:
    """List installed separators with their stems, sample rate and origin."""
    import json

    from stemcli.api import default_model
    from stemcli.plugins import SeparatorError, load_separator, registry

    try:
        reg = registry()
    except SeparatorError as exc:
        raise _fail(exc) from None
    rows = []
    default = default_model()
    for name, entry in reg.items():
        try:
            sep = load_separator(name)
            row = {**sep.info(), "origin": entry.origin, "default": name == default, "description": type(sep).description}
        except Exception as exc:
            row = {"name": name, "origin": entry.origin, "error": str(exc).splitlines()[0]}
        rows.append(row)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        if "error" in r:
            click.echo(f"{r['name']:<12} BROKEN: {r['error']}  [{r['origin']}]")
            continue
        mark = " (default)" if r["default"] else ""
        click.echo(
            f"{r['name']}{mark}\n    stems: {', '.join(r['sources'])}\n    {r['sample_rate']} Hz, {r['channels']} ch, "
            f"segment {r['segment']:g} s\n    from: {r['origin']}" + (f"\n    {r['description']}" if r["description"] else "")
        )


@cli.command()
@click.argument("outdir", type=click.Path(path_type=Path))
@click.option("--kind", type=click.Choice(["pop", "ensemble", "speech"]), default="pop", show_default=True,
              help="pop: vocals/drums/bass/other; ensemble: one stem per instrument; speech: two speakers.")
@click.option("--tracks", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--seconds", type=click.FloatRange(min=0, min_open=True), default=30.0, show_default=True, help="Length of each track.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--soundfont", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Use only this SoundFont (default: rotate over the installed Debian ones).")
@click.option("--splits", default="0.8,0.1,0.1", show_default=True, metavar="TRAIN,VALID,TEST",
              help="Fractions of the tracks in each split, e.g. 0,0,1 for a test-only set.")
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace a dataset previously rendered into OUTDIR.")
@click.option("-q", "--quiet", is_flag=True)
def synth(outdir, kind, tracks, seconds, seed, soundfont, splits, jobs, overwrite, quiet) -> None:
    """Render a multi-stem training set (MUSDB layout) from generated MIDI with fluidsynth.

    Writes OUTDIR/{train,valid,test}/<track>/{mixture.wav,<stem>.wav} and OUTDIR/dataset.json;
    the mixture is the exact sum of the stems; the same seed gives the same files.
    """
    from stemcli.data.synth import render_dataset

    try:
        fractions = [float(v) for v in splits.split(",")]
    except ValueError:
        raise click.ClickException(f"--splits: expected three numbers like 0.8,0.1,0.1, got '{splits}'") from None
    try:
        card = render_dataset(outdir, kind=kind, tracks=tracks, seconds=seconds, seed=seed, soundfont=soundfont,
                              jobs=jobs, progress=not quiet, overwrite=overwrite, splits=fractions)
    except (ValueError, OSError, RuntimeError) as exc:
        raise _fail(exc) from None
    if not quiet:
        counts = card.get("counts", {})
        click.echo(f"wrote {sum(counts.values()) if counts else tracks} tracks to {outdir} ({counts})", err=True)


@cli.command()
@click.argument("plugin")
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path), help="MUSDB-layout folder.")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="Run folder (checkpoints, config, log).")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Stop after this many steps.")
@click.option("--minutes", type=click.FloatRange(min=0.0, min_open=True), default=None, help="Stop after this wall-clock time.")
@click.option("--batch", type=click.IntRange(min=1), default=None, help=f"Excerpts per step.  [default: {TRAIN_DEFAULTS['batch']}]")
@click.option("--seconds", type=click.FloatRange(min=0.1), default=None, help=f"Excerpt length.  [default: {TRAIN_DEFAULTS['seconds']}]")
@click.option("--threads", type=click.IntRange(min=1), default=None)
@click.option("--seed", type=int, default=None, help="[default: 0]")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None, help=f"Adam learning rate.  [default: {TRAIN_DEFAULTS['lr']}]")
@click.option("--val-every", type=click.IntRange(min=1), default=100, show_default=True, help="Validate every N steps.")
@click.option("--resume", is_flag=True, help="Continue from the run folder's last checkpoint, with its --batch, --seconds, "
              "--lr, --precision and --seed unless given (a new --batch/--seconds/--lr/--precision applies from "
              "there on and is recorded in the run's config).")
@click.option("--config", "config_file", type=click.Path(path_type=Path), default=None,
              help="JSON file of architecture overrides, e.g. {\"low\": {\"lstm\": 64}} (nested keys merge).")
@click.option("--loss-weight", "loss_weight", multiple=True, metavar="SOURCE=W",
              help="Weight of one source in the L1 loss, e.g. drums=2 (repeatable; others weigh 1).")
@click.option("--precision", type=click.Choice(PRECISIONS), default=None,
              help="Forward pass precision: bfloat16 autocast is ~1.5x faster on CPUs with AVX512-BF16/AMX "
                   f"(weights, validation and export stay float32).  [default: {TRAIN_DEFAULTS['precision']}]")
@click.option("--ema", type=click.FloatRange(min=0.0, max=1.0, min_open=True, max_open=True), default=None,
              help="Keep an exponential moving average of the weights with this decay (e.g. 0.999); validation "
                   "and best.pt use it.  [default: none]")
@click.option("--coherent", type=click.FloatRange(min=0.0, max=1.0), default=None, metavar="P",
              help="Share of training examples that keep one song's alignment (every stem from the same "
                   "start) instead of an independent excerpt per stem.  [default: 0, or the run's on --resume]")
def train(plugin, data, out, steps, minutes, batch, seconds, threads, seed, lr, val_every, resume, config_file,
          loss_weight, precision, ema, coherent) -> None:
    """Train PLUGIN's architecture (mmdense, umx) on a MUSDB-layout folder."""
    from stemcli.train.loop import parse_loss_weights, read_config_overrides
    from stemcli.train.loop import train as train_run

    if steps is None and minutes is None:
        raise click.ClickException("give --steps or --minutes (or both: whichever comes first)")
    try:
        overrides = read_config_overrides(config_file) if config_file is not None else None
        weights = parse_loss_weights(loss_weight) if loss_weight else None
        train_run(plugin, data, out, steps=steps, minutes=minutes, batch=batch, resume=resume, seconds=seconds,
                  threads=threads, seed=seed, lr=lr, val_every=val_every, config=overrides,
                  loss_weights=weights, precision=precision, ema=ema, coherent=coherent,
                  log=lambda m: click.echo(m, err=True))
    except (ValueError, OSError, RuntimeError) as exc:
        raise _fail(exc) from None


@cli.command(name="export")
@click.argument("run_dir", metavar="RUN_DIR|CARD", type=click.Path(exists=True, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path), help="models/NAME.onnx")
@click.option("--check-audio", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Real audio for the onnxruntime-vs-torch parity check.")
@click.option("--weights", type=click.Choice(["float32", "float16"]), default=None,
              help="float16: round the weights to float16 and store them so (files half the size; "
                   "onnxruntime still computes in float32).  [default: float32; from a card: the card's]")
@click.option("--segment", type=click.FloatRange(min=0.0, min_open=True), default=None,
              help="Chunk length (s) the card asks the engine for.  [default: 30; from a card: the card's]")
@click.option("--context", type=click.FloatRange(min=0.0), default=None,
              help="Neighbouring audio (s) the engine feeds on each side of a chunk or time part, rounded "
                   "up to the model's alignment.  [default: 1; from a card: the card's]")
@click.option("--force", is_flag=True, help="Overwrite an existing model.")
def export_cmd(run_dir, output, check_audio, weights, segment, context, force) -> None:
    """Export a training run to ONNX, verify it against torch, and write its model card.

    Given a model card (models/NAME.json) instead of a run folder, re-export that model's
    weights with this version's exporter; its training record and SDR carry over.
    """
    from stemcli.export import export_run
    from stemcli.modelcard import post_path

    if not force:  # any file the export writes: the graph, its card, its weights, a post graph
        for path in (output, output.with_suffix(".json"), output.with_suffix(".pt"), post_path(output)):
            if path.exists():
                raise click.ClickException(f"{path}: exists (use --force to replace it)")
    try:
        card = export_run(run_dir, output, check_audio=check_audio, weights=weights, segment=segment, context=context)
    except (ValueError, OSError, RuntimeError) as exc:
        raise _fail(exc) from None
    written = [str(output.with_name(f["path"])) for f in card["files"].values()]
    click.echo(f"wrote {', '.join(written)} and {output.with_suffix('.json')} "
               f"(sha256 {str(card.get('sha256', ''))[:12]}...)", err=True)


@cli.command()
@click.option("-m", "--model", default=None,
              help="Separator or model card to evaluate (default: the default model; 'oracle': the oracle alone).")
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path), help="MUSDB-layout folder (or one split).")
@click.option("--split", default="test", show_default=True)
@click.option("--estimates", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Score an existing folder of estimates (<track>/<stem>.wav) instead of running a model.")
@click.option("--oracle", is_flag=True, help="Score the ideal-ratio-mask oracle (the upper bound of a mask model).")
@click.option("--n-fft", "n_fft", type=int, default=None,
              help="The oracle's STFT size (default: the model's, else 4096).")
@click.option("--hop", type=int, default=None, help="The oracle's STFT hop (default: the model's, else 1024).")
@click.option("--oracle-mask", type=click.Choice(["irm", "psm"]), default=None,
              help="The oracle's mask: ideal power ratio (irm, the default) or clipped phase-sensitive (psm: the "
                   "best any real mask in [0, 1] does on the spectrogram, an upper reference).")
@click.option("--tracks", type=int, default=None, help="Only the first N tracks.")
@click.option("--backend", type=click.Choice(["onnx", "torch"]), default=None)
@click.option("--wiener", type=int, default=0, show_default=True, help="Multichannel Wiener post-filter EM iterations (0 = off).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--plot", "plot_out", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("-q", "--quiet", is_flag=True)
def evaluate(model, data, split, estimates, oracle, n_fft, hop, oracle_mask, tracks, backend, wiener, json_out,
             plot_out, quiet) -> None:
    """BSS Eval v4 (museval): SDR/SIR/SAR/ISR per stem, median over frames then tracks."""
    from stemcli.evaluate import evaluate as run_eval
    from stemcli.plugins import SeparatorError

    try:
        run_eval(model, data, split=split, estimates=estimates, json_out=json_out, plot_out=plot_out, backend=backend,
                 progress=not quiet, tracks=tracks, oracle=oracle, wiener=wiener, n_fft=n_fft, hop=hop,
                 oracle_mask=oracle_mask, echo=click.echo)
    except (SeparatorError, ValueError, OSError) as exc:
        raise _fail(exc) from None


@cli.command()
@click.argument("result_a", metavar="A")
@click.argument("result_b", metavar="B")
@click.option("--metric", type=click.Choice(["SDR", "SIR", "SAR", "ISR"]), default="SDR", show_default=True)
@click.option("--target", type=float, default=None,
              help="Also give the share of bootstrap resamples where A's median is this many dB above B's.")
@click.option("--resamples", type=click.IntRange(min=0), default=4000, show_default=True,
              help="Paired bootstrap draws of the tracks (0: no interval).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None)
def compare(result_a, result_b, metric, target, resamples, json_out) -> None:
    """Compare two `stemcli evaluate --json` results track by track (A - B).

    A and B are result files on the same tracks; FILE:default or FILE:baseline picks an entry of
    a benchmarks/quality.py --json file; FILE1,FILE2,... makes a side the per-track mean of several
    results (the seeds of one recipe, say; a name in such a list cannot hold a comma).  Prints the
    medians, their difference with a paired bootstrap interval, the mean and median of the
    per-track differences and the tracks A wins.
    """
    from stemcli import compare as cmp

    try:
        a, b = cmp.load_side(result_a), cmp.load_side(result_b)
        rows = cmp.compare(a, b, metric=metric, target=target, resamples=resamples)
    except ValueError as exc:
        raise _fail(exc) from None
    click.echo(cmp.format_comparison(rows, a["label"], b["label"], metric, target))
    if cmp.same_model(a, b):
        click.echo("note: A and B scored the same model files on the same backend (the sha256s are equal)", err=True)
    if json_out:
        from stemcli.evaluate import write_json

        try:
            write_json({"a": a["label"], "b": b["label"], "metric": metric, "target": target,
                        "resamples": resamples, "interval": cmp.INTERVAL, "per_stem": rows}, json_out)
        except OSError as exc:
            raise _fail(exc) from None
        click.echo(f"wrote {json_out}", err=True)


from stemcli.commands.remix import remix  # noqa: E402  (click + stdlib only at import)

cli.add_command(remix)


def main() -> None:
    """The ``stemcli`` console command (and ``python -m stemcli``): a heavy command re-runs once
    under tcmalloc when it is installed (:mod:`stemcli.allocator`), then Click takes over.  A
    program calling this function with its own ``sys.argv`` is never re-executed."""
    from stemcli import allocator

    args = sys.argv[1:]
    if allocator.own_command_line():
        try:
            allocator.maybe_reexec(args[0] if args and not args[0].startswith("-") else None)
        except ValueError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(2)
    cli(prog_name="stemcli")


if __name__ == "__main__":
    main()
