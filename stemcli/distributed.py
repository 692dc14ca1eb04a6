"""MPI fan-out (mpi4py over OpenMPI): a long song split across ranks, or a folder spread over ranks.

Run as ``mpiexec -n N stemcli separate INPUTS...``; the CLI switches to
:func:`run_batch_distributed` by itself when the MPI world has more than one rank.

Two modes, chosen from the plan (identical on every rank, because rank 0 plans and broadcasts):

* **Files** (at least as many files to do as ranks): files go to ranks largest first, each to
  the least-loaded rank (greedy longest-processing-time).  Each rank separates and writes its
  own files with the ordinary single-process code (atomic :class:`~stemcli.audio.StemWriter`),
  and sends each :class:`~stemcli.batch.Outcome` to rank 0, which reports it.
* **Split** (fewer files than ranks): each file's chunk plan is cut into rounds; within a round
  every rank runs one contiguous range of chunks and accumulates the weighted outputs and the
  weights (:meth:`~stemcli.chunking.OverlapAdd.raw`) over the samples that range covers.  The
  interior no other rank touches is normalised on the rank; the two borders shared with
  neighbours travel as float64 sums to rank 0 (one ``Gatherv`` per round), which adds them in a
  fixed order and normalises them.  For WAV output at the separation rate (the common case)
  rank 0 preallocates the temporary stem files and every rank writes its interiors into them
  itself (:class:`~stemcli.audio.RangeWriter`), so only a few MB cross ranks; otherwise (FLAC,
  or resampling back to the file's rate) the interiors travel as float32 too and rank 0 writes
  everything in order through the same ``StemWriter`` as the single-process path.  Either way:
  the same sums in the same order, so the same stems, and nothing under a final name until
  every rank has finished.  A round holds at most ``STEMCLI_MPI_REGION_MB`` (default 256) MiB
  of sums per rank set, whatever the song length.

Failures never hang the world: every rank catches its own exception, and all ranks exchange an
error flag (``allgather``) at each sync point, so a failing rank turns into a failed
:class:`~stemcli.batch.Outcome` on every rank, naming the rank and the cause; rank 0 then
aborts the writer, so nothing is left under a final name.

Importing this module never imports mpi4py (``mpi4py`` initialises MPI on import).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from stemcli.batch import BatchOptions, Job, Outcome
    from stemcli.plugins import Separator

TAG_OUTCOME = 17
DEFAULT_REGION_MB = 256.0


def mpi_world_size() -> int:
    """Size of the MPI world this process was started in, without importing mpi4py (1 if none)."""
    for var in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS"):
        value = os.environ.get(var)
        if value and value.isdigit():
            return int(value)
    return 1


def mpi_rank() -> int:
    """Rank of this process in the MPI world, without importing mpi4py (0 if none)."""
    for var in ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK"):
        value = os.environ.get(var)
        if value and value.isdigit():
            return int(value)
    return 0


def is_root_rank() -> bool:
    """True on rank 0 or outside MPI: the one process that should print."""
    return mpi_rank() == 0


def lpt_assign(costs: Sequence[float], ranks: int) -> list[int]:
    """Greedy longest-processing-time: largest cost first, each to the least-loaded rank.

    Ties go to the earlier item and the lower rank, so every rank computes the same answer.

    Returns:
        the rank of each item, in the order of ``costs``.
    """
    if ranks < 1:
        raise ValueError(f"need at least one rank, got {ranks}")
    load = [0.0] * ranks
    owner = [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        r = min(range(ranks), key=lambda r: (load[r], r))
        owner[i] = r
        load[r] += max(float(costs[i]), 1e-9)  # zero-cost items still spread out
    return owner


def split_range(a: int, b: int, ranks: int, rank: int) -> tuple[int, int]:
    """The contiguous part ``[lo, hi)`` of ``[a, b)`` that ``rank`` of ``ranks`` owns (may be empty)."""
    m = b - a
    return a + rank * m // ranks, a + (rank + 1) * m // ranks


def plan_rounds(n_chunks: int, ranks: int, per_rank: int) -> list[tuple[int, int]]:
    """Cut ``n_chunks`` into rounds of ``ranks * per_rank`` consecutive chunks.

    Returns:
        ``[(first, stop), ...]`` chunk index ranges, covering ``[0, n_chunks)`` in order.
    """
    step = max(1, ranks * max(1, per_rank))
    return [(a, min(a + step, n_chunks)) for a in range(0, n_chunks, step)]


def chunks_per_rank(ranks: int, rows: int, segment: int, budget_mb: float | None = None) -> int:
    """How many chunks each rank runs per round so rank 0's round buffer stays within budget.

    Args:
        rows: float64 rows per sample (sources * channels + 1 for the weight).
        segment: chunk length in samples.
        budget_mb: MiB of float64 sums rank 0 may hold for one round
            (default: env ``STEMCLI_MPI_REGION_MB`` or 256).
    """
    if budget_mb is None:
        raw = os.environ.get("STEMCLI_MPI_REGION_MB", "")
        try:
            budget_mb = float(raw) if raw else DEFAULT_REGION_MB
        except ValueError:
            raise ValueError(f"STEMCLI_MPI_REGION_MB must be a number of MiB, got '{raw}'") from None
    per_chunk = rows * max(1, segment) * 8
    return max(1, int(budget_mb * 2**20 // (ranks * per_chunk)))


@dataclass
class RankStats:
    """Timings of one rank (seconds), written as JSON when ``STEMCLI_MPI_STATS=path`` is set."""

    rank: int
    size: int = 1
    mode: str = ""
    setup_s: float = 0.0  # validation, separator creation, planning + broadcast
    chunks: int = 0  # split mode: chunks this rank separated
    chunk_s: float = 0.0  # split mode: time inside the separator for those chunks
    chunk_cpu_s: float = 0.0  # split mode: CPU time of the same
    sync_s: float = 0.0  # split mode: waiting at error-flag allgathers (load imbalance)
    gather_s: float = 0.0  # split mode: time inside Gatherv (after the sync: transfer)
    gather_bytes: int = 0  # split mode: bytes received (rank 0) or sent (others)
    write_s: float = 0.0  # split mode, rank 0: add, normalise, resample, write, commit
    open_s: float = 0.0  # split mode: probe + open (+ resample to temp) of the input
    in_place_samples: int = 0  # split mode: samples this rank wrote into the output files itself
    files: int = 0  # file mode: files this rank separated
    file_s: float = 0.0  # file mode: time in separate_file
    total_s: float = 0.0
    cpu_s: float = 0.0  # CPU time of this process since it started (imports included)
    maxrss_mb: float = 0.0  # peak resident memory of this process


class _Failure(Exception):
    """An error already agreed on by every rank (carries the message to report)."""


def _describe(exc: BaseException) -> str:
    from stemcli.audio import AudioError
    from stemcli.plugins import SeparatorError

    text = str(exc).splitlines()[0] if str(exc) else ""
    if isinstance(exc, (AudioError, SeparatorError, ValueError, OSError)) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _settle(comm: Any, poll: float = 0.001) -> None:
    """Wait for every rank without spinning a core (a blocking MPI wait busy-polls).

    Used before each collective where ranks may arrive far apart, so an early rank sleeps
    instead of stealing CPU from the rank still working (or from anything else on the node).
    """
    req = comm.Ibarrier()
    while not req.Test():
        time.sleep(poll)


def _agree(comm: Any, err: str | None) -> list[tuple[int, str]]:
    """Exchange error flags: every rank gets ``[(rank, message), ...]`` of the ranks that failed."""
    _settle(comm)
    return [(r, e) for r, e in enumerate(comm.allgather(err)) if e is not None]


def _file_message(path: Path, errors: list[tuple[int, str]], size: int) -> str:
    """One line naming the file and the cause; names the rank unless every rank agreed."""
    msgs = {m for _, m in errors}
    if len(errors) == size and len(msgs) == 1:  # the file itself is bad: every rank saw it
        msg = errors[0][1]
    else:
        r, m = errors[0]
        msg = f"rank {r} failed: {m}"
    return msg if str(path) in msg else f"{path}: {msg}"


def _setup_error(errors: list[tuple[int, str, str]]) -> Exception:
    from stemcli.plugins import SeparatorError

    r, kind, msg = next((e for e in errors if e[0] == 0), errors[0])
    text = msg if r == 0 else f"rank {r}: {msg}"
    cls = {"ValueError": ValueError, "OSError": OSError}.get(kind, SeparatorError)
    return cls(text)


def run_batch_distributed(
    inputs: Sequence[str | Path],
    opts: "BatchOptions",
    report: Callable[["Outcome"], None] = lambda o: None,
) -> list["Outcome"]:
    """:func:`stemcli.batch.run_batch` over the ranks of ``MPI.COMM_WORLD``.

    Call it on every rank with the same arguments.  Only rank 0 calls ``report`` and shows
    progress bars; every rank returns the same outcomes (in plan order), so every rank can
    exit with the same status.  Each rank uses one separator thread unless ``STEMCLI_THREADS``
    is set (OpenMPI binds each rank to one core).  ``opts.jobs`` is ignored under MPI.

    With one rank (or without mpi4py outside ``mpiexec``) this is exactly ``run_batch``.

    Raises:
        SeparatorError, ValueError, OSError: whole-batch problems (bad model, stem, template,
            option), raised on every rank; the message names the rank if only some ranks hit it.
    """
    from stemcli.batch import run_batch

    try:
        from mpi4py import MPI
    except ImportError as exc:
        if mpi_world_size() <= 1:
            return run_batch(inputs, opts, report)
        raise OSError(
            f"running under MPI ({mpi_world_size()} ranks) but mpi4py cannot be imported ({exc}); "
            "install it with `pip install mpi4py` and an MPI library (apt-get install openmpi-bin libopenmpi-dev)"
        ) from None
    comm = MPI.COMM_WORLD
    if comm.Get_size() == 1:
        return run_batch(inputs, opts, report)
    return _run(comm, MPI, inputs, opts, report)


def _run(comm: Any, MPI: Any, inputs: Sequence[str | Path], opts: "BatchOptions", report: Callable) -> list:
    from stemcli.audio import AudioError, find_audio_files, probe
    from stemcli.batch import Job, plan_jobs, validate_options

    rank, size = comm.Get_rank(), comm.Get_size()
    stats = RankStats(rank, size)
    t0 = time.perf_counter()
    # One core per rank (OpenMPI binds ranks to cores); the user's STEMCLI_THREADS wins.
    os.environ.setdefault("STEMCLI_THREADS", "1")
    os.environ.setdefault("OMP_NUM_THREADS", os.environ["STEMCLI_THREADS"])

    sep = None
    payload = None
    err: tuple[int, str, str] | None = None
    try:
        from stemcli.api import check_stems, get_separator

        validate_options(opts)
        sep = get_separator(opts.model, opts.backend, opts.wiener)
        stems = check_stems(sep, opts.stems)
        sep.select_sources(stems)
        if rank == 0:
            files = find_audio_files(inputs)
            plan = plan_jobs(files, stems, Path(opts.outdir), opts.template, opts.fmt, sep.name, opts.force)
            costs = []
            for p in plan:
                try:
                    costs.append(probe(p.input).duration if isinstance(p, Job) else 0.0)
                except AudioError:
                    costs.append(0.0)  # fails fast when its rank gets to it
            payload = (plan, costs)
    except Exception as exc:
        kind = "SeparatorError"
        for cls in (ValueError, OSError):
            if isinstance(exc, cls):
                kind = cls.__name__
        err = (rank, kind, _describe(exc))
    _settle(comm)
    errors = [e for e in comm.allgather(err) if e is not None]
    if errors:
        raise _setup_error(errors)
    plan, costs = comm.bcast(payload, root=0)
    stats.setup_s = time.perf_counter() - t0

    try:
        return _run_plan(comm, MPI, plan, costs, sep, opts, report, stats, t0)
    except Exception as exc:  # a bug, not a bad file: the ranks are out of step, so stop them all
        import traceback

        traceback.print_exc()
        print(f"stemcli: rank {rank}: internal error ({_describe(exc)}); aborting all {size} ranks",
              file=sys.stderr, flush=True)
        comm.Abort(70)
        raise


def _run_plan(comm: Any, MPI: Any, plan: list, costs: list[float], sep: "Separator", opts: "BatchOptions",
              report: Callable, stats: RankStats, t0: float) -> list:
    from stemcli.batch import Bars, Job, Outcome

    rank, size = comm.Get_rank(), comm.Get_size()
    results: dict[int, Outcome] = {}
    todo = [i for i, p in enumerate(plan) if isinstance(p, Job)]
    if rank == 0:
        for i, p in enumerate(plan):
            if isinstance(p, Outcome):
                results[i] = p
                report(p)
    enabled = _progress_enabled(opts) and rank == 0
    bars = Bars(len(todo), enabled) if rank == 0 else None
    try:
        if len(todo) >= size:
            stats.mode = "files"
            results.update(_run_files(comm, MPI, plan, costs, todo, sep, opts, report, bars, stats))
        elif todo:
            stats.mode = "split"
            for i in todo:
                o = _run_split(comm, MPI, plan[i], sep, opts, bars, stats)
                if rank == 0:
                    results[i] = o
                    report(o)
                    bars.done_file()
    finally:
        if bars is not None:
            bars.close()
    _settle(comm)
    final = comm.bcast([results[i] for i in range(len(plan))] if rank == 0 else None, root=0)
    stats.total_s = time.perf_counter() - t0
    stats.cpu_s = time.process_time()
    try:
        import resource

        stats.maxrss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    except ImportError:  # pragma: no cover - not on Windows
        pass
    _dump_stats(comm, stats)
    return final


def _progress_enabled(opts: "BatchOptions") -> bool:
    """Bars on a TTY; OpenMPI pipes the ranks' stderr, so ``STEMCLI_PROGRESS=1`` forces them."""
    forced = os.environ.get("STEMCLI_PROGRESS", "").strip().lower()
    if forced in ("1", "true", "yes", "on"):
        return opts.progress
    if forced in ("0", "false", "no", "off"):
        return False
    return opts.progress and sys.stderr.isatty()


def _dump_stats(comm: Any, stats: RankStats) -> None:
    _settle(comm)
    all_stats = comm.gather(asdict(stats), root=0)
    path = os.environ.get("STEMCLI_MPI_STATS")
    if comm.Get_rank() == 0 and path:
        try:
            Path(path).write_text(json.dumps(all_stats, indent=2))
        except OSError as exc:
            print(f"warning: STEMCLI_MPI_STATS: cannot write {path} ({exc.strerror or exc})", file=sys.stderr)


# --------------------------------------------------------------------------- file mode


def _run_files(comm: Any, MPI: Any, plan: list, costs: list[float], todo: list[int], sep: "Separator",
               opts: "BatchOptions", report: Callable, bars: Any, stats: RankStats) -> dict[int, "Outcome"]:
    """Each rank separates its own files (largest first); outcomes go to rank 0 as they finish."""
    from stemcli.batch import Outcome, _run_job

    rank = comm.Get_rank()
    owner = dict(zip(todo, lpt_assign([costs[i] for i in todo], comm.Get_size())))
    mine = sorted((i for i in todo if owner[i] == rank), key=lambda i: (-costs[i], i))
    results: dict[int, Outcome] = {}
    remote = sum(1 for i in todo if owner[i] != 0)
    received = 0

    def take(block: bool) -> None:
        nonlocal received
        while received < remote:
            if not comm.Iprobe(source=MPI.ANY_SOURCE, tag=TAG_OUTCOME):
                if not block:
                    return
                time.sleep(0.001)  # sleep, not a blocking recv that spins a core
                continue
            i, o = comm.recv(source=MPI.ANY_SOURCE, tag=TAG_OUTCOME)
            received += 1
            results[i] = o
            report(o)
            bars.done_file()

    if rank == 0:
        advance = bars.advance

        def advance_and_poll(seconds: float) -> None:  # report other ranks' files between chunks
            advance(seconds)
            take(False)

        bars.advance = advance_and_poll  # type: ignore[method-assign]
    sends = []
    for i in mine:
        job = plan[i]
        t = time.perf_counter()
        try:
            o = _run_job(job, sep, opts, bars)
        except Exception as exc:  # anything _run_job does not expect: still one line, never a hang
            o = Outcome(job.input, "failed", f"{job.input}: rank {rank} failed: {_describe(exc)}")
        stats.files += 1
        stats.file_s += time.perf_counter() - t
        if rank == 0:
            results[i] = o
            report(o)
            bars.done_file()
            take(False)
        else:
            sends.append(comm.isend((i, o), dest=0, tag=TAG_OUTCOME))
    if rank == 0:
        take(True)
    else:
        while not MPI.Request.Testall(sends):
            time.sleep(0.001)
    return results


# --------------------------------------------------------------------------- split mode


def normalise(sums: "np.ndarray", sources: int, channels: int) -> "np.ndarray":
    """Divide weighted sums by their weights, exactly as :meth:`OverlapAdd.pop` does.

    Args:
        sums: [shape=(sources * channels + 1, n)] float64: the weighted outputs, then the weights.

    Returns:
        [shape=(sources, channels, n)] float32.
    """
    import numpy as np

    n = sums.shape[1]
    out, w = sums[:-1].reshape(sources, channels, n), sums[-1]
    if n and np.any(w <= 0):
        raise ValueError("overlap-add: some samples were covered by no chunk")
    return (out / np.maximum(w, 1e-300)).astype(np.float32)


@dataclass(frozen=True)
class Share:
    """What one rank contributes in one round, in samples.

    The rank's chunks cover ``[lo, hi)``.  Inside it, ``[e0, e1)`` (the interior) is covered by
    no other rank's chunk, in this round or any other, so the rank normalises it itself and
    sends float32 audio; ``[lo, e0)`` and ``[e1, hi)`` (the borders) are shared with
    neighbours and travel as float64 sums, added on rank 0.
    """

    lo: int
    e0: int
    e1: int
    hi: int

    def nbytes(self, rows: int) -> int:
        return 8 * rows * (self.e0 - self.lo + self.hi - self.e1) + 4 * (rows - 1) * (self.e1 - self.e0)


def rank_share(chunks: Sequence[Any], a: int, b: int) -> Share | None:
    """The :class:`Share` of the rank that runs ``chunks[a:b]`` (``None`` if it runs none).

    Chunks are sorted by start and equally long, so their stops are sorted too: only chunk
    ``a - 1`` can reach into the range from the left, and only chunk ``b`` from the right.
    """
    if b <= a:
        return None
    lo, hi = chunks[a].start, chunks[b - 1].stop
    e0 = max(lo, chunks[a - 1].stop) if a > 0 else lo
    e1 = min(hi, chunks[b].start) if b < len(chunks) else hi
    e0 = min(e0, hi)
    return Share(lo, e0, max(e0, e1), hi)


def _rank_pass(sep: "Separator", src: Any, chunks: Sequence[Any], a: int, b: int, share: Share, stats: RankStats,
               interior: Callable[[int, "np.ndarray"], None],
               on_chunk: Callable[[int], None] | None = None) -> tuple["np.ndarray", "np.ndarray"]:
    """Run ``chunks[a:b]``: the interior ``[e0, e1)`` streams out as finished float32 blocks
    (:class:`~stemcli.chunking.OrderedJoin`, as in one process), the borders come back as sums.

    Args:
        interior: receives ``(start, block [shape=(sources, channels, n)] float32)`` in order.
        on_chunk: called with the chunk index after each chunk (progress).

    Returns:
        The left ``[lo, e0)`` and right ``[e1, hi)`` border sums, [shape=(rows, n)] float64 each
        (the weighted outputs, then the weights).
    """
    import numpy as np

    from stemcli.chunking import OrderedJoin, OverlapAdd
    from stemcli.pipeline import run_chunk

    S, C = len(sep.sources), sep.channels
    left = OverlapAdd(S, C, share.lo, share.e0) if share.e0 > share.lo else None
    right = OverlapAdd(S, C, share.e1, share.hi) if share.hi > share.e1 else None
    join = OrderedJoin(S, C, chunks[a:b], share.e0, share.e1) if share.e1 > share.e0 else None
    for i in range(a, b):
        t, c = time.perf_counter(), time.process_time()
        y = run_chunk(sep, src, chunks[i])
        stats.chunk_s += time.perf_counter() - t
        stats.chunk_cpu_s += time.process_time() - c
        stats.chunks += 1
        for ola in (left, right):
            if ola is not None:
                ola.add(chunks[i], y)
        if join is not None:
            for start, block in join.push(y):
                interior(start, block)
        if on_chunk is not None:
            on_chunk(i)
    if join is not None:
        for start, block in join.finish():
            interior(start, block)

    def sums(ola: OverlapAdd | None, upto: int) -> np.ndarray:
        if ola is None:
            return np.zeros((S * C + 1, 0))
        out, w = ola.raw(upto)
        return np.concatenate([out.reshape(S * C, -1), w[None]], axis=0)

    return sums(left, share.e0), sums(right, share.hi)


def _pack(left: "np.ndarray", inner: "np.ndarray", right: "np.ndarray") -> "np.ndarray":
    """Border sums (float64) and the interior (float32, may be empty) as one byte buffer."""
    import numpy as np

    return np.concatenate([np.ascontiguousarray(x).view(np.uint8).ravel() for x in (left, inner, right)])


def _unpack(buf: "np.ndarray", share: Share, rows: int) -> tuple["np.ndarray", "np.ndarray", "np.ndarray"]:
    import numpy as np

    nl, ni, nr = share.e0 - share.lo, share.e1 - share.e0, share.hi - share.e1
    a, b = 8 * rows * nl, 8 * rows * nl + 4 * (rows - 1) * ni
    left = buf[:a].view(np.float64).reshape(rows, nl)
    inner = buf[a:b].view(np.float32).reshape(rows - 1, ni)
    right = buf[b : b + 8 * rows * nr].view(np.float64).reshape(rows, nr)
    return left, inner, right


def _zones(pieces: list[tuple[int, "np.ndarray"]], rows: int) -> list[tuple[int, "np.ndarray"]]:
    """Merge overlapping ``(start, sums)`` pieces into zones, adding each zone's members in
    the order given (not position order), so every rank count adds in the same order.

    Returns:
        ``(start, sums [shape=(rows, n)])`` per zone, by position.
    """
    import numpy as np

    order = sorted(range(len(pieces)), key=lambda k: pieces[k][0])  # stable: keeps addition order
    spans: list[tuple[int, int, list[int]]] = []
    for k in order:
        lo, hi = pieces[k][0], pieces[k][0] + pieces[k][1].shape[1]
        if hi <= lo:
            continue
        if spans and lo < spans[-1][1]:
            zlo, zhi, members = spans[-1]
            spans[-1] = (zlo, max(zhi, hi), members + [k])
        else:
            spans.append((lo, hi, [k]))
    zones = []
    for zlo, zhi, members in spans:
        z = np.zeros((rows, zhi - zlo))
        for k in sorted(members):  # addition order of the caller, not position order
            lo, sums = pieces[k]
            z[:, lo - zlo : lo - zlo + sums.shape[1]] += sums
        zones.append((zlo, z))
    return zones


def border_blocks(pieces: list[tuple[int, "np.ndarray"]], upto: int, sources: int,
                  channels: int) -> tuple[list[tuple[int, "np.ndarray"]], list[tuple[int, "np.ndarray"]]]:
    """Rank 0 in in-place mode: the finished border zones of a round (interiors are written by
    their ranks).

    Args:
        pieces: ``(start, sums [shape=(rows, n)])`` border sums, in addition order.
        upto: samples before it are final (no later chunk covers them).

    Returns:
        ``(start, audio [shape=(sources, channels, n)] float32)`` per finished zone, and the
        carry: ``(start, sums)`` at or beyond ``upto``, for the next round.
    """
    out, carry = [], []
    for zlo, z in _zones(pieces, sources * channels + 1):
        n = z.shape[1]
        if zlo >= upto:
            carry.append((zlo, z))
            continue
        cut = min(n, upto - zlo)
        out.append((zlo, normalise(z[:, :cut], sources, channels)))
        if cut < n:
            carry.append((upto, z[:, cut:]))
    return out, carry


def assemble(pieces: list[tuple[int, "np.ndarray"]], inners: list[tuple[int, "np.ndarray"]], start: int,
             upto: int, sources: int, channels: int) -> tuple[list["np.ndarray"], list[tuple[int, "np.ndarray"]]]:
    """Rank 0: turn one round's borders (sums) and interiors (float32) into ordered audio.

    Overlapping border pieces are added in the order given (carry from the last round first,
    then rank by rank), normalised, and interleaved with the interiors.

    Args:
        pieces: ``(start, sums [shape=(rows, n)])`` border sums, in addition order.
        inners: ``(start, audio [shape=(sources * channels, n)])`` float32 interiors.
        start: first sample not yet written; ``upto``: samples before it are final.

    Returns:
        blocks [shape=(sources, channels, n)] float32 covering ``[start, upto)`` in order, and
        the carry: the ``(start, sums)`` border pieces at or beyond ``upto``, for the next round.
    """
    import numpy as np

    rows = sources * channels + 1
    items: list[tuple[int, int, Any]] = [(zlo, 0, z) for zlo, z in _zones(pieces, rows)]
    items += [(lo, 1, a) for lo, a in inners if a.shape[1]]
    items.sort(key=lambda it: (it[0], it[1]))
    blocks: list[np.ndarray] = []
    carry: list[tuple[int, np.ndarray]] = []
    pos = start
    for lo, kind, data in items:
        n = data.shape[1]
        if lo >= upto and kind == 0:  # borders of chunks the next round also covers
            carry.append((lo, data))
            continue
        if lo != pos:
            raise ValueError(f"overlap-add: samples {min(lo, pos)}..{max(lo, pos)} were covered by no chunk")
        if kind == 1:
            blocks.append(data.reshape(sources, channels, n))
            pos = lo + n
        else:
            cut = min(n, upto - lo)
            blocks.append(normalise(data[:, :cut], sources, channels))
            if cut < n:
                carry.append((upto, data[:, cut:]))
            pos = lo + cut
    if pos != upto:
        raise ValueError(f"overlap-add: samples {pos}..{upto} were covered by no chunk")
    return blocks, carry


def in_place_ok(fmt: str, sep_rate: int, file_rate: int) -> bool:
    """Whether split mode can let every rank write its own samples into the output files: WAV
    (seekable) at the separation rate (no resampler whose state crosses rank boundaries).
    ``STEMCLI_MPI_GATHER=1`` forces the gather-to-rank-0 path."""
    if os.environ.get("STEMCLI_MPI_GATHER", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    return fmt == "wav" and sep_rate == file_rate


def _border_bytes(share: Share, rows: int) -> int:
    return 8 * rows * (share.e0 - share.lo + share.hi - share.e1)


def _run_split(comm: Any, MPI: Any, job: "Job", sep: "Separator", opts: "BatchOptions", bars: Any,
               stats: RankStats) -> "Outcome":
    """Separate one file with its chunks spread over all ranks.

    In-place mode (:func:`in_place_ok`): rank 0 preallocates the temporary stem files, every
    rank writes the interior of its share itself, and only the borders (float64 sums shared
    with neighbours, a few MB) travel to rank 0, which adds, normalises and writes them.
    Otherwise (FLAC, or resampling back to the file's rate) interiors travel too, as float32,
    and rank 0 writes everything in order through :class:`~stemcli.audio.StemWriter`.
    """
    import numpy as np

    from stemcli.api import check_stems
    from stemcli.audio import FileSource, RangeWriter, StemWriter, probe
    from stemcli.batch import Outcome
    from stemcli.pipeline import plan_for

    rank, size = comm.Get_rank(), comm.Get_size()
    src = writer = ranged = None
    err: str | None = None
    chunks: list = []
    committed = False
    inplace = False
    temps = None
    t = time.perf_counter()
    try:
        info = probe(job.input)
        wanted = list(job.outputs)
        check_stems(sep, wanted)
        sep.select_sources(wanted)
        src = FileSource(info, sep.sample_rate, sep.channels)
        chunks = plan_for(sep, src.frames, opts.segment, opts.overlap)
        if rank == 0:  # rank 0 decides (ranks on other nodes may see another environment)
            inplace = in_place_ok(opts.fmt, sep.sample_rate, info.sample_rate)
            writer = StemWriter(job.outputs, sep.sample_rate, info.sample_rate, sep.channels, info.channels,
                                info.frames, opts.fmt, opts.bit_depth)
            if inplace:
                temps = writer.preallocate()
            bars.start_file(job.input.name, info.duration)
    except Exception as exc:
        err = _describe(exc)
    try:
        errors = _agree(comm, err)
        if errors:
            raise _Failure(_file_message(job.input, errors, size))
        inplace, temps = comm.bcast((inplace, temps), root=0)
        if inplace:
            opened: str | None = None
            try:
                ranged = RangeWriter(temps, info.channels, info.frames)
            except Exception as exc:
                opened = _describe(exc)
            if _agree(comm, opened):
                # some rank cannot reach rank 0's output folder (no shared filesystem there):
                # fall back to gathering everything on rank 0, which writes alone
                if ranged is not None:
                    ranged.close()
                    ranged = None
                inplace = False
                if rank == 0:
                    try:
                        writer.abort()
                        writer = StemWriter(job.outputs, sep.sample_rate, info.sample_rate, sep.channels,
                                            info.channels, info.frames, opts.fmt, opts.bit_depth)
                    except Exception as exc:
                        writer = None
                        err = _describe(exc)
                errors = _agree(comm, err)
                if errors:
                    raise _Failure(_file_message(job.input, errors, size))
        stats.open_s += time.perf_counter() - t
        S, C = len(sep.sources), sep.channels
        rows = S * C + 1
        index = {s: sep.sources.index(s) for s in job.outputs}
        # in place, a rank keeps only its border sums (the interior streams to disk) and rank 0
        # gathers borders only: one round, each rank one contiguous run of chunks, so one
        # border per pair of neighbours.  Gathering interiors too, rounds bound rank 0's buffer.
        per_rank = -(-len(chunks) // size) if inplace else chunks_per_rank(size, rows, chunks[0].length)
        carry: list[tuple[int, Any]] = []
        written = 0
        for first, stop in plan_rounds(len(chunks), size, per_rank):
            ranges = [split_range(first, stop, size, r) for r in range(size)]
            shares = [rank_share(chunks, a, b) for a, b in ranges]
            send = np.zeros(0, np.uint8)
            upto = chunks[stop].start if stop < len(chunks) else src.frames
            if err is None and shares[rank] is not None:
                try:
                    sh = shares[rank]
                    inners: list[np.ndarray] = []
                    own = ranges[rank][1] - ranges[rank][0]
                    span = (upto - written) / sep.sample_rate  # rank 0's bar: the round, by its own chunks

                    def interior(start: int, block: np.ndarray) -> None:
                        if inplace:
                            tw = time.perf_counter()
                            ranged.write_at(start, {s: block[i] for s, i in index.items()})
                            stats.in_place_samples += block.shape[-1]
                            stats.write_s += time.perf_counter() - tw
                        else:
                            inners.append(block.reshape(S * C, -1))

                    left, right = _rank_pass(sep, src, chunks, *ranges[rank], sh, stats, interior,
                                             (lambda k: bars.advance(span / own)) if rank == 0 else None)
                    inner = np.concatenate(inners, axis=1) if inners else np.zeros((S * C, 0), np.float32)
                    send = _pack(left, inner, right)
                    del left, right, inners, inner
                except Exception as exc:
                    err = _describe(exc)
            ts = time.perf_counter()
            errors = _agree(comm, err)
            stats.sync_s += time.perf_counter() - ts
            if errors:
                raise _Failure(_file_message(job.input, errors, size))
            nbytes = _border_bytes if inplace else (lambda sh, rows: sh.nbytes(rows))
            counts = [0 if sh is None else nbytes(sh, rows) for sh in shares]
            displs = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64).tolist()
            recv = np.empty(sum(counts), np.uint8) if rank == 0 else None
            tg = time.perf_counter()
            comm.Gatherv(send, [recv, counts, displs, MPI.BYTE] if rank == 0 else None, root=0)
            stats.gather_s += time.perf_counter() - tg
            stats.gather_bytes += sum(counts) if rank == 0 else send.size
            if rank == 0:
                tw = time.perf_counter()
                try:
                    pieces = list(carry)
                    inners = []
                    for r, sh in enumerate(shares):
                        if sh is None:
                            continue
                        buf = recv[displs[r] : displs[r] + counts[r]]
                        if inplace:
                            nl = 8 * rows * (sh.e0 - sh.lo)
                            pieces += [(sh.lo, buf[:nl].view(np.float64).reshape(rows, -1)),
                                       (sh.e1, buf[nl:].view(np.float64).reshape(rows, -1))]
                        else:
                            left, inner, right = _unpack(buf, sh, rows)
                            pieces += [(sh.lo, left), (sh.e1, right)]
                            inners.append((sh.e0, inner))
                    if inplace:
                        done, carry = border_blocks(pieces, upto, S, C)
                        for start, block in done:
                            ranged.write_at(start, {s: block[i] for s, i in index.items()})
                            stats.in_place_samples += block.shape[-1]
                    else:
                        blocks, carry = assemble(pieces, inners, written, upto, S, C)
                        for block in blocks:
                            writer.write({s: block[i] for s, i in index.items()})
                    if shares[0] is None:  # rank 0 ran no chunk this round: its bar moves now
                        bars.advance((upto - written) / sep.sample_rate)
                    written = upto
                except Exception as exc:
                    err = _describe(exc)  # told to the others at the next agreement
                stats.write_s += time.perf_counter() - tw
        if ranged is not None:
            try:
                ranged.close()
            except Exception as exc:
                err = err or _describe(exc)
            ranged = None
        errors = _agree(comm, err)  # every rank's samples are on disk before rank 0 renames
        if errors:
            raise _Failure(_file_message(job.input, errors, size))
        if rank == 0:
            tw = time.perf_counter()
            try:
                outs = writer.commit()
                committed = True
            except Exception as exc:
                err = _describe(exc)
            stats.write_s += time.perf_counter() - tw
        errors = _agree(comm, err)
        if errors:
            raise _Failure(_file_message(job.input, errors, size))
        return Outcome(job.input, "done", f"{job.input}: {len(job.outputs)} stems", dict(outs) if rank == 0 else dict(job.outputs))
    except _Failure as fail:
        return Outcome(job.input, "failed", str(fail))
    finally:
        if ranged is not None:
            try:
                ranged.close()
            except Exception:
                pass  # the file failed already; its temporaries go below
        if writer is not None and not committed:
            writer.abort()
        if src is not None:
            src.close()
        if bars is not None:
            bars.end_file()
