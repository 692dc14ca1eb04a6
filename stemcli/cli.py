"""The ``stemcli`` command line: a thin Click shell over :mod:`stemcli.api`.

Heavy modules (numpy, onnxruntime, torch) are imported inside the commands, so
``stemcli --help`` stays fast and never imports torch.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from stemcli import __version__


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
@click.option("--overlap", type=float, default=0.25, show_default=True, help="Chunk overlap fraction in [0, 1).")
@click.option("--backend", type=click.Choice(["onnx", "torch"]), default=None, help="Runtime for model-based separators (default onnx).")
@click.option("--force", is_flag=True, help="Overwrite existing stems.")
@click.option("-j", "--jobs", type=int, default=1, show_default=True, help="Files processed in parallel.")
@click.option("--distributed/--no-distributed", default=None, help="Fan out over MPI ranks (automatic under mpiexec with more than one rank).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or per-file lines.")
def separate(inputs, model, outdir, stems, fmt, bit_depth, template, segment, overlap, backend, force, jobs, distributed, quiet) -> None:
    """Separate audio files or folders (recursively) into stems.

    Writes OUTDIR/{track}/{stem}.{ext} (the MUSDB layout) at the input's sample rate and
    channel count.  Files whose stems all exist are skipped unless --force.
    """
    from stemcli.batch import BatchOptions, run_batch
    from stemcli.plugins import SeparatorError

    opts = BatchOptions(
        model=model, backend=backend, outdir=outdir, stems=_stems_option(stems), fmt=fmt, bit_depth=int(bit_depth),
        template=template, segment=segment, overlap=overlap, force=force, jobs=jobs, progress=not quiet,
    )
    runner = run_batch
    if distributed is not False:
        from stemcli.distributed import mpi_world_size

        if distributed or mpi_world_size() > 1:
            from stemcli.distributed import run_batch_distributed as runner  # type: ignore[no-redef]

    def report(o) -> None:
        if o.status == "failed":
            click.echo(f"error: {o.message}", err=True)
        elif not quiet:
            click.echo(f"{o.status}: {o.message}", err=True)

    try:
        outcomes = runner(list(inputs), opts, report)
    except (SeparatorError, ValueError, OSError) as exc:
        raise _fail(exc) from None
    failed = sum(o.status == "failed" for o in outcomes)
    if not quiet or failed:
        counts = {s: sum(o.status == s for o in outcomes) for s in ("done", "skipped", "failed")}
        click.echo(", ".join(f"{n} {s}" for s, n in counts.items()), err=True)
    if not outcomes:
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


def main() -> None:
    cli(prog_name="stemcli")


if __name__ == "__main__":
    main()
