"""MPI fan-out under a real ``mpiexec``: same stems as one process, every file exactly once,
idle ranks, failing files and failing ranks.

Each MPI test starts ``mpiexec`` (OpenMPI) with the flags a root container needs and
``--oversubscribe`` (this machine has 2 cores), then compares with a single-process run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import tone, write
from stemcli.audio import ArraySource
from stemcli.batch import BatchOptions, run_batch
from stemcli.distributed import (
    RankStats,
    _pack,
    _rank_pass,
    _unpack,
    assemble,
    border_blocks,
    lpt_assign,
    mpi_rank,
    mpi_world_size,
    plan_rounds,
    rank_share,
    split_range,
)
from stemcli.pipeline import plan_for, separate_array
from stemcli.plugins import Separator

MPIEXEC = shutil.which("mpiexec")
needs_mpi = pytest.mark.skipif(
    MPIEXEC is None, reason="mpiexec not found: install OpenMPI (apt-get install openmpi-bin libopenmpi-dev)"
)
STEMS = ("harmonic", "percussive")


def mpirun(n: int, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``mpiexec -n n python ARGS`` as root-in-a-container would run it."""
    full_env = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1", **(env or {})}
    full_env.pop("STEMCLI_THREADS", None)
    cmd = [MPIEXEC, "-n", str(n), "--allow-run-as-root", "--oversubscribe", sys.executable, *args]
    return subprocess.run(cmd, env=full_env, cwd=cwd, capture_output=True, text=True, timeout=180)


def separate_cli(n: int, inputs: list[Path], outdir: Path, *extra: str, env: dict[str, str] | None = None):
    return mpirun(
        n, "-m", "stemcli", "separate", *map(str, inputs), "-m", "hpss", "-o", str(outdir),
        "--bit-depth", "32", *extra, env=env,
    )


def single(inputs: list[Path], outdir: Path, **kw) -> list:
    opts = BatchOptions(**{"model": "hpss", "outdir": outdir, "bit_depth": 32, "progress": False, **kw})
    return run_batch(inputs, opts)


def assert_same_stems(a: Path, b: Path, track: str) -> None:
    for stem in STEMS:
        x, sr_x = sf.read(a / track / f"{stem}.wav", dtype="float32", always_2d=True)
        y, sr_y = sf.read(b / track / f"{stem}.wav", dtype="float32", always_2d=True)
        assert sr_x == sr_y and x.shape == y.shape, (track, stem, x.shape, y.shape)
        np.testing.assert_allclose(y, x, atol=1e-5, rtol=0, err_msg=f"{track}/{stem}")


def error_lines(text: str) -> list[str]:
    return [l for l in text.splitlines() if l.startswith(("error:", "Error:"))]


def no_partials(root: Path) -> bool:
    return not [p for p in root.rglob("*") if ".partial" in p.name]


# ---------------------------------------------------------------- pure helpers, no MPI


def test_world_size_and_rank_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS",
                "OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert (mpi_world_size(), mpi_rank()) == (1, 0)
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "3")
    assert (mpi_world_size(), mpi_rank()) == (4, 3)
    monkeypatch.delenv("OMPI_COMM_WORLD_SIZE")
    monkeypatch.setenv("PMI_SIZE", "7")  # MPICH / hydra
    assert mpi_world_size() == 7
    monkeypatch.setenv("PMI_SIZE", "garbage")
    assert mpi_world_size() == 1


def test_importing_distributed_does_not_start_mpi() -> None:
    code = "import sys, stemcli.distributed as d; d.mpi_world_size(); print('mpi4py' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


def test_lpt_assign_balances_largest_first() -> None:
    costs = [3.0, 10.0, 1.0, 7.0, 5.0, 5.0]
    owner = lpt_assign(costs, 2)
    loads = [sum(c for c, r in zip(costs, owner) if r == k) for k in range(2)]
    assert owner[1] == 0 and owner[3] == 1  # 10 to rank 0, then 7 to the emptier rank 1
    assert sorted(loads) == [15.0, 16.0]
    assert lpt_assign(costs, 2) == owner  # deterministic
    assert sorted(lpt_assign([0.0] * 4, 4)) == [0, 1, 2, 3]  # zero costs still spread
    with pytest.raises(ValueError):
        lpt_assign(costs, 0)


@pytest.mark.parametrize("n,ranks,per_rank", [(1, 3, 1), (5, 2, 1), (12, 2, 3), (7, 4, 2), (3, 8, 5)])
def test_rounds_and_ranges_cover_every_chunk_once(n: int, ranks: int, per_rank: int) -> None:
    seen = []
    for first, stop in plan_rounds(n, ranks, per_rank):
        assert stop - first <= ranks * per_rank
        parts = [split_range(first, stop, ranks, r) for r in range(ranks)]
        for (a, b), (c, _) in zip(parts, parts[1:]):
            assert b == c  # contiguous, in rank order
        seen += [i for a, b in parts for i in range(a, b)]
    assert seen == list(range(n))


class RunningSum(Separator):
    """Output depends on where the chunk starts (a running sum), so wrong weights or a sample
    taken from the wrong chunk change the result; stem 2 is the mix itself."""

    sources, sample_rate, channels, segment, context = ("cum", "mix"), 1000, 2, 0.2, 0.013

    def separate(self, mix: np.ndarray) -> np.ndarray:
        return np.stack([np.cumsum(mix, axis=-1) * 0.05, mix], axis=1)


@pytest.mark.parametrize(
    "frames,overlap,ranks,per_rank",
    [(1234, 0.25, 2, 1), (1234, 0.25, 3, 2), (999, 0.9, 4, 1), (5000, 0.5, 5, 3), (150, 0.25, 3, 1), (2001, 0.0, 2, 2)],
)
def test_simulated_ranks_reassemble_like_one_process(frames: int, overlap: float, ranks: int, per_rank: int) -> None:
    """Every rank's share, packed, unpacked and assembled in one process = single-process output."""
    sep = RunningSum()
    audio = np.random.default_rng(frames).standard_normal((2, frames)).astype(np.float32)
    want = separate_array(sep, audio, overlap=overlap)
    src = ArraySource(audio)
    chunks = plan_for(sep, frames, None, overlap)
    S, C, rows = 2, 2, 5
    got, carry, written = [], [], 0
    for first, stop in plan_rounds(len(chunks), ranks, per_rank):
        pieces, inners = list(carry), []
        for r in range(ranks):
            a, b = split_range(first, stop, ranks, r)
            share = rank_share(chunks, a, b)
            if share is None:
                continue
            parts: list = []
            edges = _rank_pass(sep, src, chunks, a, b, share, RankStats(r),
                               lambda start, block: parts.append((start, block.reshape(S * C, -1))))
            assert [st for st, _ in parts][:1] == ([share.e0] if share.e1 > share.e0 else [])
            inner = np.concatenate([blk for _, blk in parts], axis=1) if parts else np.zeros((S * C, 0), np.float32)
            buf = _pack(edges[0], inner, edges[1])
            assert buf.size == share.nbytes(rows)
            left, inner, right = _unpack(buf, share, rows)
            pieces += [(share.lo, left), (share.e1, right)]
            inners.append((share.e0, inner))
        upto = chunks[stop].start if stop < len(chunks) else frames
        blocks, carry = assemble(pieces, inners, written, upto, S, C)
        got += blocks
        written = upto
    out = np.concatenate(got, axis=-1)
    assert out.shape == want.shape
    assert np.array_equal(out, want)  # the same sums in the same order: bit for bit


@pytest.mark.parametrize("frames,overlap,ranks,per_rank",
                         [(1234, 0.25, 2, 1), (999, 0.9, 4, 1), (5000, 0.5, 3, 2), (5000, 0.25, 2, 99), (2001, 0.0, 3, 99)])
def test_simulated_in_place_writes_like_one_process(frames: int, overlap: float, ranks: int, per_rank: int) -> None:
    """In-place mode: interiors written by their ranks, borders by rank 0 = single-process output."""
    sep = RunningSum()
    audio = np.random.default_rng(frames + 1).standard_normal((2, frames)).astype(np.float32)
    want = separate_array(sep, audio, overlap=overlap)
    src = ArraySource(audio)
    chunks = plan_for(sep, frames, None, overlap)
    S, C = 2, 2
    out = np.full((S, C, frames), np.nan, np.float32)
    carry: list = []
    for first, stop in plan_rounds(len(chunks), ranks, per_rank):
        pieces = list(carry)
        for r in range(ranks):
            a, b = split_range(first, stop, ranks, r)
            sh = rank_share(chunks, a, b)
            if sh is None:
                continue

            def write(start: int, block: np.ndarray, sh=sh) -> None:
                n = block.shape[-1]
                assert sh.e0 <= start and start + n <= sh.e1  # only inside its own interior
                assert np.all(np.isnan(out[..., start : start + n]))  # nobody wrote there before
                out[..., start : start + n] = block

            left, right = _rank_pass(sep, src, chunks, a, b, sh, RankStats(r), write)
            assert left.shape[1] == sh.e0 - sh.lo and right.shape[1] == sh.hi - sh.e1
            pieces += [(sh.lo, left), (sh.e1, right)]
        upto = chunks[stop].start if stop < len(chunks) else frames
        done, carry = border_blocks(pieces, upto, S, C)
        for start, block in done:
            assert start + block.shape[-1] <= upto and np.all(np.isnan(out[..., start : start + block.shape[-1]]))
            out[..., start : start + block.shape[-1]] = block
    assert not carry and not np.isnan(out).any()
    assert np.array_equal(out, want)


def test_interior_is_exclusive_to_one_rank() -> None:
    chunks = plan_for(RunningSum(), 3000, None, 0.25)  # segment 200, stride 150
    shares = [rank_share(chunks, *split_range(0, len(chunks), 3, r)) for r in range(3)]
    for sh in shares:
        assert sh.lo <= sh.e0 <= sh.e1 <= sh.hi
        others = [c for c in chunks if not (sh.lo <= c.start and c.stop <= sh.hi)]
        assert not any(c.start < sh.e1 and c.stop > sh.e0 for c in others)
    assert shares[0].e0 == 0 and shares[-1].e1 == 3000 and shares[1].e0 > shares[1].lo


# ---------------------------------------------------------------- under mpiexec


@needs_mpi
@pytest.mark.parametrize("gather,bits", [("0", "32"), ("1", "32"), ("0", "16")])
def test_two_ranks_split_one_file_like_one_process(tmp_path: Path, gather: str, bits: str) -> None:
    """Both split paths: ranks write their own samples in place (default), or everything is
    gathered to rank 0 (``STEMCLI_MPI_GATHER=1``, the path FLAC and resampled output take)."""
    x = tone(7.3, seed=1)
    x[:, ::5000] += 0.5  # clicks, so the percussive stem is not empty
    song = write(tmp_path / "in" / "song.wav", x, subtype="FLOAT")
    single([song], tmp_path / "one", segment=2.0, overlap=0.25, bit_depth=int(bits))
    stats = tmp_path / "stats.json"
    # a tiny region budget forces one Gatherv round per pair of chunks (5 chunks -> 3 rounds)
    r = separate_cli(2, [song], tmp_path / "mpi", "--segment", "2", "--overlap", "0.25", "--bit-depth", bits,
                     env={"STEMCLI_MPI_REGION_MB": "1", "STEMCLI_MPI_STATS": str(stats), "STEMCLI_MPI_GATHER": gather})
    assert r.returncode == 0, r.stderr
    assert_same_stems(tmp_path / "one", tmp_path / "mpi", "song")
    for stem in ("harmonic", "percussive"):  # identical files, not just close samples
        assert (tmp_path / "one" / "song" / f"{stem}.wav").read_bytes() == (tmp_path / "mpi" / "song" / f"{stem}.wav").read_bytes()
    ranks = json.loads(stats.read_text())
    assert [s["mode"] for s in ranks] == ["split", "split"]
    assert sum(s["chunks"] for s in ranks) == 5 and all(s["chunks"] > 0 for s in ranks)
    assert ranks[0]["gather_bytes"] > 0
    frames = x.shape[1]
    if gather == "0":  # every sample written once, by the ranks; only borders travel
        assert sum(s["in_place_samples"] for s in ranks) == frames and ranks[1]["in_place_samples"] > frames / 4
        assert ranks[0]["gather_bytes"] < frames * 5 * 8  # borders only (large here: 2 s chunks)
    else:
        assert all(s["in_place_samples"] == 0 for s in ranks)
        assert ranks[0]["gather_bytes"] > frames * 4 * 4
    assert no_partials(tmp_path / "mpi")


@needs_mpi
def test_more_ranks_than_chunks_and_resampled_mono(tmp_path: Path) -> None:
    short = write(tmp_path / "in" / "short.wav", tone(1.2, seed=4), subtype="FLOAT")  # one chunk
    mono = write(tmp_path / "in" / "mono.wav", tone(5.1, sr=22050, channels=1, seed=3), sr=22050, subtype="FLOAT")
    single([short, mono], tmp_path / "one", segment=2.0)
    stats = tmp_path / "stats.json"
    r = separate_cli(3, [short, mono], tmp_path / "mpi", "--segment", "2", env={"STEMCLI_MPI_STATS": str(stats)})
    assert r.returncode == 0, r.stderr
    assert_same_stems(tmp_path / "one", tmp_path / "mpi", "short")
    assert_same_stems(tmp_path / "one", tmp_path / "mpi", "mono")  # 22.05 kHz mono in and out
    assert sf.info(str(tmp_path / "mpi" / "mono" / "harmonic.wav")).samplerate == 22050
    ranks = json.loads(stats.read_text())
    assert sum(s["chunks"] for s in ranks) == 1 + 4  # short: 1 chunk on one rank; mono: 4 chunks


@needs_mpi
def test_folder_every_file_exactly_once_and_bad_file_fails_alone(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    for i in range(5):
        write(folder / f"t{i}.wav", tone(0.5 + 0.4 * i, seed=i), subtype="FLOAT")
    (folder / "bad.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk" * 8)
    single([folder], tmp_path / "one", segment=2.0)
    stats = tmp_path / "stats.json"
    r = separate_cli(2, [folder], tmp_path / "mpi", "--segment", "2", env={"STEMCLI_MPI_STATS": str(stats)})
    assert r.returncode != 0
    errs = error_lines(r.stderr)
    assert len(errs) == 1 and "bad.wav" in errs[0] and "not a readable audio file" in errs[0], r.stderr
    assert "Traceback" not in r.stderr
    for i in range(5):
        assert sum(f"done: {folder / f't{i}.wav'}:" in l for l in r.stderr.splitlines()) == 1, r.stderr
        assert_same_stems(tmp_path / "one", tmp_path / "mpi", f"t{i}")
    assert sorted(p.relative_to(tmp_path / "mpi").as_posix() for p in (tmp_path / "mpi").rglob("*.wav")) == sorted(
        f"t{i}/{s}.wav" for i in range(5) for s in STEMS
    )
    assert "5 done, 0 skipped, 1 failed" in r.stderr
    ranks = json.loads(stats.read_text())
    assert [s["mode"] for s in ranks] == ["files", "files"]
    assert sum(s["files"] for s in ranks) == 6 and all(s["files"] >= 2 for s in ranks)  # each job once, spread
    assert no_partials(tmp_path / "mpi")


FLAKY = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    import numpy as np
    from stemcli.batch import BatchOptions
    from stemcli.distributed import run_batch_distributed
    from stemcli.plugins import Separator

    class Flaky(Separator):
        name, sources, sample_rate, channels, segment, context = "flaky", ("a", "b"), 44100, 2, 0.5, 0.0

        def separate(self, mix):
            if os.environ["OMPI_COMM_WORLD_RANK"] == os.environ["FAIL_RANK"]:
                raise RuntimeError("boom on purpose")
            return np.stack([0.5 * mix, 0.5 * mix], axis=1)

    opts = BatchOptions(model=Flaky(), outdir=Path(sys.argv[2]), bit_depth=32, progress=False)
    outcomes = run_batch_distributed(sys.argv[3:] or sys.argv[1:2], opts, lambda o: print(o.status, o.message, file=sys.stderr))
    Path(os.environ["RESULT_DIR"], os.environ["OMPI_COMM_WORLD_RANK"]).write_text(" ".join(o.status for o in outcomes))
    sys.exit(1 if any(o.status == "failed" for o in outcomes) else 0)
    """
)


NO_SHARED_FS = textwrap.dedent(
    """
    import os, sys, json
    from pathlib import Path
    import numpy as np
    import stemcli.audio
    from stemcli.audio import AudioError
    from stemcli.batch import BatchOptions
    from stemcli.distributed import run_batch_distributed
    from stemcli.plugins import Separator

    class Halves(Separator):
        name, sources, sample_rate, channels, segment, context = "halves", ("a", "b"), 44100, 2, 0.5, 0.0

        def separate(self, mix):
            return np.stack([0.25 * mix, 0.75 * mix], axis=1)

    class Unreachable:  # rank 1 cannot open rank 0's temporary files (no shared filesystem)
        def __init__(self, temps, *a):
            raise AudioError(f"{next(iter(temps.values()))}: cannot open for writing in place (no such file)")

    if os.environ["OMPI_COMM_WORLD_RANK"] == "1":
        stemcli.audio.RangeWriter = Unreachable
    opts = BatchOptions(model=Halves(), outdir=Path(sys.argv[2]), bit_depth=16, progress=False)
    outcomes = run_batch_distributed([sys.argv[1]], opts, lambda o: print(o.status, o.message, file=sys.stderr))
    sys.exit(1 if any(o.status == "failed" for o in outcomes) else 0)
    """
)


@needs_mpi
def test_in_place_falls_back_to_gather_when_a_rank_cannot_open_the_files(tmp_path: Path) -> None:
    song = write(tmp_path / "in" / "song.wav", tone(2.2, seed=8), subtype="FLOAT")
    script = tmp_path / "noshare.py"
    script.write_text(NO_SHARED_FS)
    stats = tmp_path / "stats.json"
    r = mpirun(2, str(script), str(song), str(tmp_path / "out"), env={"STEMCLI_MPI_STATS": str(stats)})
    assert r.returncode == 0, r.stderr
    ranks = json.loads(stats.read_text())
    assert [s["mode"] for s in ranks] == ["split", "split"] and all(s["chunks"] > 0 for s in ranks)
    assert all(s["in_place_samples"] == 0 for s in ranks)  # gathered after all
    x, _ = sf.read(song, dtype="float32")
    for stem, g in (("a", 0.25), ("b", 0.75)):
        y, _ = sf.read(tmp_path / "out" / "song" / f"{stem}.wav", dtype="float32")
        assert y.shape == x.shape and np.max(np.abs(y - g * x)) < 1e-4  # 16-bit output
    assert no_partials(tmp_path / "out")


@needs_mpi
@pytest.mark.parametrize("fail_rank", ["1", "0"])
def test_failing_rank_fails_the_file_on_every_rank_and_writes_nothing(tmp_path: Path, fail_rank: str) -> None:
    song = write(tmp_path / "in" / "song.wav", tone(2.2, seed=5), subtype="FLOAT")  # 5 chunks of 0.5 s
    script = tmp_path / "flaky.py"
    script.write_text(FLAKY)
    results = tmp_path / "results"
    results.mkdir()
    r = mpirun(2, str(script), str(song), str(tmp_path / "out"), env={"FAIL_RANK": fail_rank, "RESULT_DIR": str(results)})
    assert r.returncode != 0
    failed = [l for l in r.stderr.splitlines() if l.startswith("failed ")]
    assert len(failed) == 1, r.stderr  # reported once, by rank 0
    assert f"rank {fail_rank} failed: RuntimeError: boom on purpose" in failed[0] and str(song) in failed[0]
    assert {p.name: p.read_text() for p in results.iterdir()} == {"0": "failed", "1": "failed"}  # same on all ranks
    out = tmp_path / "out"
    assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()]  # nothing, not even temps


@needs_mpi
def test_failing_rank_in_file_mode_fails_only_its_files(tmp_path: Path) -> None:
    a = write(tmp_path / "in" / "a.wav", tone(2.0, seed=6), subtype="FLOAT")  # longer: rank 0 (LPT)
    b = write(tmp_path / "in" / "b.wav", tone(1.0, seed=7), subtype="FLOAT")  # rank 1, which fails
    script = tmp_path / "flaky.py"
    script.write_text(FLAKY)
    r = mpirun(2, str(script), "-", str(tmp_path / "out"), str(a), str(b), env={"FAIL_RANK": "1", "RESULT_DIR": str(tmp_path)})
    assert r.returncode != 0
    lines = [l for l in r.stderr.splitlines() if l.startswith(("failed ", "done "))]
    assert sorted(l.split()[0] for l in lines) == ["done", "failed"], r.stderr
    assert any(l.startswith(f"failed {b}: rank 1 failed: RuntimeError: boom on purpose") for l in lines), r.stderr
    assert sorted(p.name for p in (tmp_path / "out").rglob("*") if p.is_file()) == ["a.wav", "b.wav"]
    assert sorted(p.parent.name for p in (tmp_path / "out").rglob("*") if p.is_file()) == ["a", "a"]
    assert (tmp_path / "0").read_text() == (tmp_path / "1").read_text() == "done failed"  # plan order, every rank
