"""MPI scaling of ``stemcli separate``: 1 rank vs N ranks, one long song and a folder of songs.

Measures, in one invocation and on generated audio (nothing downloaded):

* wall time of ``stemcli separate`` with 1 rank (a plain single process, one separator thread,
  like one MPI rank) and under ``mpiexec -n N`` (default N = 2), for a 3-minute song (the song
  is split across ranks chunk by chunk) and for a folder of 8 songs of 3 minutes (files spread
  across ranks); speedup, parallel efficiency and throughput (seconds of audio per second);
* per-chunk compute time, write times, samples each rank wrote in place, and the Gatherv
  transfer cost (from
  ``STEMCLI_MPI_STATS``), plus a clean Gatherv probe in MB/s;
* the same work split by hand into N independent plain processes started together (the song
  cut into N files, the folder dealt out file by file), no MPI at all: what N processes on this
  machine can do with every start-up paid and nothing exchanged, the reference for the MPI rows;
* a small Amdahl-style model extrapolating the 3-minute song to 16 and 32 ranks.

Usage::

    .venv/bin/python benchmarks/mpi_scaling.py                 # default model, 2 ranks
    .venv/bin/python benchmarks/mpi_scaling.py --model hpss --json mpi.json

Runs as root in a container (adds ``--allow-run-as-root --oversubscribe``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

SR = 44100


def make_song(path: Path, seconds: float, seed: int) -> None:
    """A stereo 'song': chord pads (harmonic), kick/hat hits (percussive), a little noise."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    t = np.arange(n) / SR
    root = 110.0 * 2 ** (rng.integers(0, 12) / 12)
    x = np.zeros((2, n), np.float32)
    bar = 2.0
    for k in range(int(math.ceil(seconds / bar))):
        a, b = int(k * bar * SR), min(n, int((k + 1) * bar * SR))
        chord = root * 2 ** (np.array([0, 4, 7, 12]) / 12) * (2 ** (rng.choice([0, 5, 7, -2]) / 12))
        for c in range(2):
            x[c, a:b] += sum(0.05 * np.sin(2 * np.pi * f * t[a:b] + c) for f in chord).astype(np.float32)
    beat = 0.5
    for k in range(int(seconds / beat)):
        a = int(k * beat * SR)
        m = min(n - a, 4410)
        env = np.exp(-np.arange(m) / 600.0).astype(np.float32)
        hit = env * (rng.standard_normal(m).astype(np.float32) * 0.3 if k % 2 else np.sin(2 * np.pi * 60 * np.arange(m) / SR).astype(np.float32) * 0.6)
        x[:, a : a + m] += hit
    x += 0.003 * rng.standard_normal(x.shape).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), x.T, SR, subtype="PCM_16")


def mpi_env() -> dict[str, str]:
    return {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}


def mpiexec(n: int) -> list[str]:
    exe = shutil.which("mpiexec")
    if exe is None:
        sys.exit("mpiexec not found: apt-get install openmpi-bin libopenmpi-dev")
    return [exe, "-n", str(n), "--allow-run-as-root", "--oversubscribe"]


def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)  # includes mpiexec's ranks once reaped
    return ru.ru_utime + ru.ru_stime


def run_separate(ranks: int, inputs: list[Path], outdir: Path, model: str | None, stats: Path | None) -> tuple[float, float]:
    """Wall and CPU seconds (all processes) of one ``stemcli separate`` run (1 rank = plain process, 1 thread)."""
    args = [sys.executable, "-m", "stemcli", "separate", *map(str, inputs), "-o", str(outdir), "-q", "--force", "--bit-depth", "32"]
    if model:
        args += ["-m", model]
    env = mpi_env()
    env["STEMCLI_THREADS"] = "1"  # one core per rank, and the 1-rank baseline on one core too
    if stats is not None:
        env["STEMCLI_MPI_STATS"] = str(stats)
    cmd = args if ranks == 1 else mpiexec(ranks) + args
    c, t = children_cpu(), time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - t, children_cpu() - c
    if r.returncode != 0:
        sys.exit(f"failed ({' '.join(cmd)}):\n{r.stderr}")
    return wall, cpu


def run_by_hand(groups: list[list[Path]], outdir: Path, model: str | None) -> float:
    """Wall seconds of ``len(groups)`` plain one-thread ``stemcli separate`` processes started
    together, one per group of inputs (no MPI): the same work split by hand."""
    env = mpi_env()
    env["STEMCLI_THREADS"] = "1"
    env.pop("STEMCLI_MPI_STATS", None)
    cmds = []
    for k, inputs in enumerate(groups):
        args = [sys.executable, "-m", "stemcli", "separate", *map(str, inputs), "-o", str(outdir / f"p{k}"), "-q",
                "--force", "--bit-depth", "32"]
        cmds.append(args + (["-m", model] if model else []))
    t = time.perf_counter()
    procs = [subprocess.Popen(c, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for c in cmds]
    errs = [p.communicate()[1] for p in procs]
    wall = time.perf_counter() - t
    for c, p, e in zip(cmds, procs, errs):
        if p.returncode != 0:
            sys.exit(f"failed ({' '.join(c)}):\n{e}")
    return wall


def cut_song(song: Path, parts: int, outdir: Path) -> list[Path]:
    """``song`` cut into ``parts`` consecutive files of equal length."""
    x, sr = sf.read(str(song), dtype="float32", always_2d=True)
    bounds = np.linspace(0, len(x), parts + 1).astype(int)
    outdir.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(parts):
        p = outdir / f"part{k}.wav"
        sf.write(str(p), x[bounds[k] : bounds[k + 1]], sr, subtype="PCM_16")
        paths.append(p)
    return paths


def startup_wall(ranks: int, model: str | None, reps: int = 3) -> float:
    """Fastest wall time of just starting what a run starts: the interpreter, stemcli's imports,
    the separator (model load) and, under ``mpiexec``, MPI_Init and one barrier."""
    code = ("import os; os.environ['STEMCLI_THREADS'] = '1'; import stemcli.cli, stemcli.batch, stemcli.audio; "
            f"from stemcli.api import get_separator; get_separator({model!r})")
    if ranks > 1:
        code += "; import stemcli.distributed; from mpi4py import MPI; MPI.COMM_WORLD.Barrier()"
    cmd = [sys.executable, "-c", code]
    cmd = cmd if ranks == 1 else mpiexec(ranks) + cmd
    best = math.inf
    for _ in range(reps):
        t = time.perf_counter()
        r = subprocess.run(cmd, env=mpi_env(), capture_output=True, text=True)
        best = min(best, time.perf_counter() - t)
        if r.returncode != 0:
            sys.exit(f"start-up probe failed ({' '.join(cmd)}):\n{r.stderr}")
    return best


def cores_available(procs: int, seconds: float = 2.0) -> float:
    """CPU cores ``procs`` busy processes actually get right now (the machine may be shared)."""
    code = f"import time\nt = time.time()\nwhile time.time() - t < {seconds}: pass"
    c, t = children_cpu(), time.perf_counter()
    ps = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(procs)]
    for p in ps:
        p.wait()
    return (children_cpu() - c) / (time.perf_counter() - t)


def time_chunks(sep, song: Path, n: int = 3) -> tuple[int, float]:
    """Number of chunks of ``song`` and the median CPU seconds of one chunk, in this process (1 thread)."""
    from stemcli.audio import FileSource, probe
    from stemcli.pipeline import plan_for, run_chunk

    with FileSource(probe(song), sep.sample_rate, sep.channels) as src:
        chunks = plan_for(sep, src.frames, None, None)  # the model's segment and overlap
        times = []
        for chunk in chunks[:n]:
            t = time.process_time()  # CPU time: what the chunk costs a dedicated core
            run_chunk(sep, src, chunk)
            times.append(time.process_time() - t)
    return len(chunks), float(np.median(times))


def max_diff(a: Path, b: Path) -> float:
    worst = 0.0
    for f in sorted(a.rglob("*.wav")):
        x, _ = sf.read(str(f), dtype="float32")
        y, _ = sf.read(str(b / f.relative_to(a)), dtype="float32")
        worst = max(worst, float(np.abs(x - y).max()))
    return worst


def comm_probe(mb: float, reps: int = 5) -> None:
    """Under mpiexec: time Gatherv of ``mb`` MB from every other rank to rank 0 (after a barrier)."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    n = int(mb * 2**20 / 8)
    send = np.full(n if rank else 0, float(rank))
    counts = [0] + [n] * (size - 1)
    displs = [0] + [n * i for i in range(size - 1)]
    recv = np.empty(sum(counts)) if rank == 0 else None
    times = []
    for _ in range(reps + 1):
        comm.Barrier()
        t = time.perf_counter()
        comm.Gatherv(send, [recv, counts, displs, MPI.DOUBLE] if rank == 0 else None, root=0)
        times.append(time.perf_counter() - t)
    if rank == 0:
        moved = mb * (size - 1)
        best = float(np.median(times[1:]))
        print(json.dumps({"mb": moved, "seconds": best, "s_per_mb": best / moved}))


def model_time(p: int, n_chunks: int, t_chunk: float, serial: float, mb_total: float, s_per_mb: float,
               launch: float) -> float:
    """Amdahl-style wall time at ``p`` ranks (see docs/mpi.md)."""
    return serial + launch + math.ceil(n_chunks / p) * t_chunk + mb_total * (p - 1) / p * s_per_mb


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="separator (default: stemcli's default model)")
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--song-seconds", type=float, default=180.0)
    ap.add_argument("--folder-songs", type=int, default=8)
    ap.add_argument("--folder-seconds", type=float, default=180.0)
    ap.add_argument("--json", type=Path, default=None, help="write all measurements here")
    ap.add_argument("--workdir", type=Path, default=None, help="keep audio and outputs here (default: temp)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per configuration; the fastest counts")
    ap.add_argument("--comm-probe", type=float, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.comm_probe is not None:
        comm_probe(a.comm_probe)
        return

    os.environ["STEMCLI_THREADS"] = "1"  # the in-process chunk timing runs on one core, like a rank
    from stemcli.api import default_model, get_separator

    model = a.model or default_model()
    sep = get_separator(model)
    tmp = None if a.workdir else tempfile.TemporaryDirectory(prefix="stemcli-mpi-bench-")
    work = a.workdir or Path(tmp.name)
    song = work / "song" / "song.wav"
    folder = work / "folder"
    if not song.exists():
        make_song(song, a.song_seconds, seed=0)
    for i in range(a.folder_songs):
        if not (folder / f"s{i}.wav").exists():
            make_song(folder / f"s{i}.wav", a.folder_seconds, seed=100 + i)

    startup = {p: startup_wall(p, model) for p in (1, a.ranks)}
    load = os.getloadavg()[0]
    avail = {1: cores_available(1), a.ranks: cores_available(a.ranks)}
    rows = []
    by_hand: dict[str, dict] = {}
    stats_by: dict[str, list] = {}
    for name, inputs, audio_s in (
        (f"{a.song_seconds / 60:g}-min song", [song], a.song_seconds),
        (f"{a.folder_songs} x {a.folder_seconds:g} s", [folder], a.folder_songs * a.folder_seconds),
    ):
        key = "song" if name.endswith("song") else "folder"
        walls, cpus = {}, {}
        for p in (1, a.ranks):
            stats = work / f"stats-{key}-{p}.json" if p > 1 else None
            runs = [run_separate(p, inputs, work / f"out-{key}-{p}", model, stats) for _ in range(max(1, a.repeat))]
            walls[p], cpus[p] = min(runs)
            if stats is not None:
                stats_by[key] = json.loads(stats.read_text())
        diff = max_diff(work / f"out-{key}-1", work / f"out-{key}-{a.ranks}")
        if key == "song":
            groups = [[p] for p in cut_song(song, a.ranks, work / "song-parts")]
        else:
            files = sorted(folder.glob("*.wav"))
            groups = [files[k :: a.ranks] for k in range(a.ranks)]
        hand = min(run_by_hand(groups, work / f"out-{key}-hand", model) for _ in range(max(1, a.repeat)))
        by_hand[key] = {"ranks": a.ranks, "wall_s": hand, "speedup": walls[1] / hand,
                        "groups": [[str(p.name) for p in g] for g in groups]}
        crit = {1: cpus[1], a.ranks: max(r["cpu_s"] for r in stats_by[key])}
        for p in (1, a.ranks):
            sp = walls[1] / walls[p]
            rows.append({"workload": key, "label": name, "ranks": p, "wall_s": walls[p], "cpu_s": cpus[p], "critical_cpu_s": crit[p],
                         "projected_speedup": crit[1] / crit[p], "speedup": sp,
                         "efficiency": sp / p, "audio_s": audio_s, "x_realtime": audio_s / walls[p],
                         "rtf": walls[p] / audio_s, "max_abs_diff_vs_1_rank": diff,
                         "startup_s": startup[p],
                         "speedup_after_startup": (walls[1] - startup[1]) / max(1e-9, walls[p] - startup[p])})

    probe = subprocess.run(mpiexec(2) + [sys.executable, __file__, "--comm-probe", "64"], env=mpi_env(),
                           capture_output=True, text=True)
    comm = json.loads(probe.stdout.strip().splitlines()[-1]) if probe.returncode == 0 else {"s_per_mb": float("nan")}
    t_launch = time.perf_counter()
    subprocess.run(mpiexec(a.ranks) + ["true"], env=mpi_env(), capture_output=True)
    launch = time.perf_counter() - t_launch

    song_stats = stats_by["song"]
    r0 = song_stats[0]
    n_chunks, t_chunk_alone = time_chunks(sep, song)
    done = max(1, sum(s["chunks"] for s in song_stats))
    t_chunk = sum(s["chunk_cpu_s"] for s in song_stats) / done  # CPU s per chunk, inside the MPI run
    t_chunk_wall = sum(s["chunk_s"] for s in song_stats) / done
    gather_mb = r0["gather_bytes"] / 2**20
    inline_s_per_mb = r0["gather_s"] / gather_mb if gather_mb else float("nan")
    # Dedicated-core terms (the machine is shared, so wall time is not a clean measure).
    # Rank 0's CPU beyond its own chunks is the serial part: start-up, open, receive, add the
    # borders, write.  (Every rank pays the start-up, in parallel; only rank 0 writes.)
    serial = r0["cpu_s"] - r0["chunk_cpu_s"]
    others = [s["cpu_s"] - s["chunk_cpu_s"] for s in song_stats[1:]]
    total_mb = gather_mb  # what reaches rank 0 for the whole song; (P-1)/P of it crosses the wire
    predict = {p: model_time(p, n_chunks, t_chunk, serial, total_mb, comm["s_per_mb"], launch if p > 1 else 0.0)
               for p in (1, 2, 4, 8, 16, 32)}
    # finer chunks for many ranks: one chunk per rank, same per-second cost plus context
    seg = sep.segment
    per_s = t_chunk / (seg + 2 * sep.context)
    # P chunks with overlap v cover L seconds when segment = L / (1 + (P - 1) * (1 - v))
    keep = 1.0 - float(sep.overlap)
    fine = {p: serial + launch + per_s * (a.song_seconds / (1 + (p - 1) * keep) + 2 * sep.context)
            + total_mb * (p - 1) / p * comm["s_per_mb"] for p in (16, 32)}

    # the heaviest model (CPU s per chunk) that still separates the song faster than real time
    budget = {p: (a.song_seconds - serial - launch - total_mb * comm["s_per_mb"]) / math.ceil(n_chunks / p)
              for p in (16, 32)}
    budget_fine = {p: (a.song_seconds - serial - launch - total_mb * comm["s_per_mb"])
                   / (a.song_seconds / (1 + (p - 1) * keep) + 2 * sep.context) for p in (16, 32)}

    print(f"\nstemcli MPI scaling: model {model} ({len(sep.sources)} stems, segment {sep.segment:g} s), "
          f"{os.cpu_count()} cores, load average at start {load:.1f}")
    print(f"CPU actually available (busy-loop probe): 1 process {avail[1]:.2f} cores, "
          f"{a.ranks} processes {avail[a.ranks]:.2f} cores in total")
    print(f"{'workload':<14} {'ranks':>5} {'wall s':>8} {'speedup':>8} {'cpu s':>7} {'crit s':>7} {'proj.':>7} {'effic.':>7} {'x realtime':>11} {'RTF':>7} {'max|diff|':>10} {'start s':>8} {'excl.':>7}")
    for r in rows:
        print(f"{r['label']:<14} {r['ranks']:>5} {r['wall_s']:>8.2f} {r['speedup']:>7.2f}x {r['cpu_s']:>7.1f} {r['critical_cpu_s']:>7.1f} "
              f"{r['projected_speedup']:>6.2f}x {r['efficiency']:>7.2f} "
              f"{r['x_realtime']:>10.1f}x {r['rtf']:>7.3f} {r['max_abs_diff_vs_1_rank']:>10.1e} "
              f"{r['startup_s']:>8.2f} {r['speedup_after_startup']:>6.2f}x")
    print("  wall/speedup: measured on this (shared) machine; cpu s: CPU of all processes; crit s: CPU of the\n"
          "  busiest rank (start-up included); proj.: crit(1)/crit(N), the speedup on dedicated cores;\n"
          "  x realtime = audio s / wall s; RTF = wall s / audio s; max|diff| vs the 1-rank stems (float32 WAV);\n"
          "  start s: wall time of only starting up (interpreter, imports, model load, + MPI_Init under mpiexec);\n"
          "  excl.: speedup of the wall time after start-up, (wall(1) - start(1)) / (wall(N) - start(N))")
    print(f"\nthe same work split by hand into {a.ranks} plain one-thread processes started together (no MPI; "
          "the song cut into equal files):")
    for key, h in by_hand.items():
        label = next(r["label"] for r in rows if r["workload"] == key)
        print(f"{label:<14} {h['ranks']:>5} {h['wall_s']:>8.2f} {h['speedup']:>7.2f}x")
    writes = ", ".join(f"{s_['write_s']:.2f}" for s_ in song_stats)
    inplace = ", ".join(str(s_.get("in_place_samples", 0)) for s_ in song_stats)
    print("\nmodel inputs (3-min song, split mode):")
    print(f"  chunks {n_chunks}, CPU per chunk {t_chunk:.3f} s ({seg:g} s + {2 * sep.context:g} s context; "
          f"{per_s:.4f} s per second of audio); wall per chunk in the {a.ranks}-rank run {t_chunk_wall:.3f} s; "
          f"CPU per chunk alone {t_chunk_alone:.3f} s")
    print(f"  serial part = rank 0 CPU outside chunks {serial:.2f} s (other ranks {', '.join(f'{o:.2f}' for o in others)} s); "
          f"write (own samples in place + rank 0's borders) per rank {writes} s, "
          f"samples written in place per rank {inplace}; "
          f"setup {r0['setup_s']:.2f} s; "
          f"mpiexec launch ({a.ranks} ranks) {launch:.2f} s")
    print(f"  Gatherv to rank 0: {gather_mb:.1f} MB in {r0['gather_s']:.3f} s inline ({inline_s_per_mb * 1e3:.2f} ms/MB); "
          f"probe {comm['s_per_mb'] * 1e3:.2f} ms/MB; sync wait rank 0 {r0['sync_s']:.2f} s")
    print("  predicted wall time on dedicated cores, 3-min song (default segment):  "
          + "  ".join(f"{p}: {t:.1f} s ({a.song_seconds / t:.1f}x rt)" for p, t in predict.items()))
    print("  predicted with one chunk per rank (segment = song / P):                 "
          + "  ".join(f"{p}: {t:.1f} s ({a.song_seconds / t:.1f}x rt)" for p, t in fine.items()))
    print("  real time at P ranks holds while CPU per chunk (default segment) <= "
          + "  ".join(f"{p}: {b:.1f} s ({b / t_chunk:.0f}x this model)" for p, b in budget.items())
          + ";  with one chunk per rank, CPU per second of audio <= "
          + "  ".join(f"{p}: {b:.2f} s ({b / per_s:.0f}x)" for p, b in budget_fine.items()))
    out = {"model": model, "stems": list(sep.sources), "segment": seg, "cores": os.cpu_count(), "load_avg": load,
           "cores_available": avail,
           "rows": rows, "by_hand": by_hand, "stats": stats_by, "startup_s": startup, "comm_probe": comm, "launch_s": launch,
           "model_inputs": {"n_chunks": n_chunks, "t_chunk_cpu": t_chunk, "t_chunk_wall_in_mpi_run": t_chunk_wall,
                            "t_chunk_cpu_alone": t_chunk_alone, "serial": serial, "gather_mb": gather_mb,
                            "inline_s_per_mb": inline_s_per_mb},
           "predicted_default_segment": predict, "predicted_one_chunk_per_rank": fine,
           "realtime_budget_cpu_per_chunk": budget, "realtime_budget_cpu_per_audio_s_one_chunk_per_rank": budget_fine}
    if a.json:
        a.json.write_text(json.dumps(out, indent=2, default=str))
        print(f"\nwrote {a.json}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
