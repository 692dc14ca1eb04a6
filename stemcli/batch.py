"""Batch separation of files and folders: output planning, skipping, failures, progress.

Every input gets an :class:`Outcome`; one bad file never stops the batch, never overwrites
an existing stem without ``force``, and never leaves a half-written stem behind.
"""

from __future__ import annotations

import os
import string
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable, Sequence

from stemcli.audio import AudioError, find_audio_files

TEMPLATE_FIELDS = {"track", "stem", "ext", "model"}
DEFAULT_TEMPLATE = "{track}/{stem}.{ext}"


@dataclass
class Job:
    input: Path
    track: str
    outputs: dict[str, Path]  # the stems to write now
    existing: list[Path] = field(default_factory=list)


@dataclass
class Outcome:
    input: Path
    status: str  # "done" | "skipped" | "failed"
    message: str = ""
    outputs: dict[str, Path] = field(default_factory=dict)


def validate_template(template: str) -> None:
    """Check an output template: known fields, relative, no '..', contains {stem}.

    Raises:
        ValueError: with the reason.
    """
    try:
        names = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as exc:
        raise ValueError(f"--template '{template}': {exc}") from None
    unknown = names - TEMPLATE_FIELDS
    if unknown:
        raise ValueError(
            f"--template '{template}': unknown field {{{sorted(unknown)[0]}}} (use {', '.join('{' + f + '}' for f in sorted(TEMPLATE_FIELDS))})"
        )
    if "stem" not in names:
        raise ValueError(f"--template '{template}': must contain {{stem}}, or every stem lands in one file")
    probe = PurePosixPath(template.replace("\\", "/"))
    if probe.is_absolute() or template.startswith(("/", "\\")) or (len(template) > 1 and template[1] == ":"):
        raise ValueError(f"--template '{template}': must be a relative path (it goes under the output folder)")
    if ".." in probe.parts:
        raise ValueError(f"--template '{template}': must not contain '..' (outputs stay inside the output folder)")


def track_name(path: Path) -> str:
    """The track name of an input: its file name without extension, or, for a MUSDB-layout
    ``<track>/mixture.wav``, the folder's name (so a whole split can be separated at once)."""
    return path.parent.name if path.stem == "mixture" and path.parent.name else path.stem


def _safe_component(text: str) -> str:
    return text.replace("/", "_").replace("\\", "_").replace("\0", "_")


def output_path(outdir: Path, template: str, track: str, stem: str, ext: str, model: str) -> Path:
    rel = template.format(track=_safe_component(track), stem=_safe_component(stem), ext=ext, model=_safe_component(model))
    parts = PurePosixPath(rel).parts
    if ".." in parts:  # a track named '..' must not escape
        raise ValueError(f"output path '{rel}' would leave the output folder")
    return outdir.joinpath(*parts)


def plan_jobs(
    inputs: Sequence[Path],
    sources: Sequence[str],
    outdir: Path,
    template: str,
    ext: str,
    model: str,
    force: bool,
) -> list[Job | Outcome]:
    """Decide what each input will write; collisions and complete outputs become Outcomes."""
    claimed: dict[Path, Path] = {}
    plan: list[Job | Outcome] = []
    for path in inputs:
        track = track_name(path)
        try:
            outs = {s: output_path(outdir, template, track, s, ext, model) for s in sources}
        except ValueError as exc:
            plan.append(Outcome(path, "failed", f"{path}: {exc}"))
            continue
        clash = next((p for p in outs.values() if p.resolve() in claimed), None)
        if clash is not None:
            plan.append(
                Outcome(
                    path,
                    "failed",
                    f"{path}: output {clash} would also be written for {claimed[clash.resolve()]}; "
                    "rename one input or use a --template that tells them apart",
                )
            )
            continue
        if len(set(outs.values())) != len(outs):
            plan.append(Outcome(path, "failed", f"{path}: --template '{template}' maps two stems to one file"))
            continue
        for p in outs.values():
            claimed[p.resolve()] = path
        existing = [p for p in outs.values() if p.exists()]
        todo = outs if force else {s: p for s, p in outs.items() if not p.exists()}
        if not todo:
            plan.append(Outcome(path, "skipped", f"{path}: all stems exist (use --force to redo)", dict(outs)))
        else:
            plan.append(Job(path, track, todo, existing))
    return plan


@dataclass
class BatchOptions:
    model: str | None = None
    backend: str | None = None
    outdir: Path = Path("separated")
    stems: Sequence[str] | None = None
    fmt: str = "wav"
    bit_depth: int = 16
    template: str = DEFAULT_TEMPLATE
    segment: float | None = None
    overlap: float | None = None  # None: the separator's own
    force: bool = False
    jobs: int = 1
    progress: bool = True
    wiener: int = 0


def validate_options(opts: BatchOptions) -> None:
    """Whole-batch checks, done before any file is touched.

    Raises:
        ValueError: bad template, overlap, segment, jobs or format/bit-depth pair.
    """
    from stemcli.audio import SUBTYPES

    validate_template(opts.template)
    if opts.overlap is not None and not 0.0 <= opts.overlap < 1.0:
        raise ValueError(f"--overlap must be in [0, 1), got {opts.overlap}")
    if opts.segment is not None and not opts.segment > 0:
        raise ValueError(f"--segment must be positive seconds, got {opts.segment}")
    if opts.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {opts.jobs}")
    if opts.wiener < 0:
        raise ValueError(f"--wiener must be >= 0 iterations, got {opts.wiener}")
    if (opts.fmt, opts.bit_depth) not in SUBTYPES:
        raise ValueError(f"--format {opts.fmt} does not support --bit-depth {opts.bit_depth}")


def _run_job(job: Job, sep: Any, opts: BatchOptions, bars: "Bars | None") -> Outcome:
    from stemcli.api import separate_file
    from stemcli.plugins import SeparatorError

    try:
        outs = separate_file(
            job.input,
            sep,
            job.outputs,
            fmt=opts.fmt,
            bit_depth=opts.bit_depth,
            segment=opts.segment,
            overlap=opts.overlap,
            on_start=None if bars is None else (lambda d: bars.start_file(job.input.name, d)),
            on_chunk=None if bars is None else bars.advance,
        )
    except (AudioError, SeparatorError, ValueError, OSError) as exc:
        msg = str(exc) if str(job.input) in str(exc) else f"{job.input}: {exc}"
        return Outcome(job.input, "failed", msg.splitlines()[0])
    finally:
        if bars is not None:
            bars.end_file()
    return Outcome(job.input, "done", f"{job.input}: {len(outs)} stems", outs)


class Bars:
    """Two tqdm bars: overall (files) and the current file (seconds of audio)."""

    def __init__(self, total_files: int, enabled: bool):
        from tqdm import tqdm

        self._tqdm = tqdm
        self.enabled = enabled
        self.overall = tqdm(total=total_files, unit="file", desc="overall", position=0, disable=not enabled, leave=True)
        self.file: Any = None

    def start_file(self, name: str, seconds: float) -> None:
        self.file = self._tqdm(
            total=round(seconds, 2), unit="s", desc=name[:30], position=1, leave=False, disable=not self.enabled,
            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} s [{elapsed}<{remaining}]",
        )

    def advance(self, seconds: float) -> None:
        if self.file is not None:
            self.file.update(min(seconds, self.file.total - self.file.n))

    def end_file(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None

    def done_file(self) -> None:
        self.overall.update(1)

    def close(self) -> None:
        self.end_file()
        self.overall.close()


_WORKER: dict[str, Any] = {}


def _worker_init(opts: BatchOptions, threads: int) -> None:
    # Each worker process gets its share of the cores; model backends read STEMCLI_THREADS.
    os.environ["OMP_NUM_THREADS"] = os.environ["STEMCLI_THREADS"] = str(threads)
    from stemcli.api import get_separator

    _WORKER["sep"] = get_separator(opts.model, opts.backend, opts.wiener)
    if opts.stems:
        _WORKER["sep"].select_sources(list(opts.stems))


def _worker_run(job: Job, opts: BatchOptions) -> Outcome:
    return _run_job(job, _WORKER["sep"], opts, None)


def run_batch(
    inputs: Sequence[str | Path],
    opts: BatchOptions,
    report: Callable[[Outcome], None] = lambda o: None,
) -> list[Outcome]:
    """Separate every audio file found in ``inputs`` into ``opts.outdir``.

    Args:
        inputs: files and folders (folders are searched recursively for audio files).
        report: called with each :class:`Outcome` as soon as it is known.

    Raises:
        SeparatorError, ValueError: for problems that concern the whole batch (unknown
            model or stem, bad template/overlap/format); per-file problems become Outcomes.
    """
    from stemcli.api import check_stems, get_separator

    validate_options(opts)
    sep = get_separator(opts.model, opts.backend, opts.wiener)
    stems = check_stems(sep, opts.stems)
    sep.select_sources(stems)
    files = find_audio_files(inputs)
    outdir = Path(opts.outdir)
    plan = plan_jobs(files, stems, outdir, opts.template, opts.fmt, sep.name, opts.force)
    outcomes: list[Outcome] = []
    jobs = [p for p in plan if isinstance(p, Job)]
    for p in plan:
        if isinstance(p, Outcome):
            outcomes.append(p)
            report(p)
    enabled = opts.progress and sys.stderr.isatty()
    parallel = opts.jobs > 1 and len(jobs) > 1
    bars = Bars(len(jobs), enabled)

    def collect(results: Iterable[Outcome]) -> None:
        for o in results:
            outcomes.append(o)
            bars.done_file()
            report(o)

    try:
        if parallel:  # whole files per worker process; per-file bars only in the serial case
            threads = max(1, (os.cpu_count() or 1) // opts.jobs)
            with ProcessPoolExecutor(opts.jobs, initializer=_worker_init, initargs=(opts, threads)) as pool:
                futures = [pool.submit(_worker_run, j, opts) for j in jobs]
                collect(f.result() for f in as_completed(futures))
        else:
            collect(_run_job(job, sep, opts, bars) for job in jobs)
    finally:
        bars.close()
    return outcomes
