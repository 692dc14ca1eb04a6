"""`stemcli separate` end to end with Click's CliRunner, and every kind of bad input.

Each bad input must give a one-line error naming the file and the cause, a non-zero exit,
no traceback, nothing existing overwritten, and the other files of the batch still done.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from conftest import tone, write
from stemcli.cli import cli


def run(*args: str) -> "object":
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def errors(result) -> list[str]:
    return [l for l in result.output.splitlines() if l.startswith(("error:", "Error:"))]


def test_separate_writes_musdb_layout(tmp_path: Path, song: Path) -> None:
    out = tmp_path / "sep"
    r = run("separate", str(song), "-m", "hpss", "-o", str(out), "--bit-depth", "32")
    assert r.exit_code == 0, r.output
    h, sr = sf.read(out / "song" / "harmonic.wav", always_2d=True)
    p, _ = sf.read(out / "song" / "percussive.wav", always_2d=True)
    x, _ = sf.read(song, always_2d=True)
    assert sr == 44100 and h.shape == x.shape
    np.testing.assert_allclose(h + p, x, atol=1e-5)  # mask-based: stems sum to the mixture
    assert not list(out.rglob(".*partial*"))


def test_stems_option_writes_only_those(tmp_path: Path, song: Path) -> None:
    out = tmp_path / "sep"
    assert run("separate", str(song), "-m", "hpss", "-o", str(out), "--stems", "percussive").exit_code == 0
    assert sorted(p.name for p in (out / "song").iterdir()) == ["percussive.wav"]
    # resuming later writes just the missing stem and keeps the existing one untouched
    before = (out / "song" / "percussive.wav").stat().st_mtime_ns
    assert run("separate", str(song), "-m", "hpss", "-o", str(out)).exit_code == 0
    assert sorted(p.name for p in (out / "song").iterdir()) == ["harmonic.wav", "percussive.wav"]
    assert (out / "song" / "percussive.wav").stat().st_mtime_ns == before


def test_batch_is_resumable_and_force_overwrites(tmp_path: Path, song: Path) -> None:
    out = tmp_path / "sep"
    assert run("separate", str(song), "-m", "hpss", "-o", str(out)).exit_code == 0
    target = out / "song" / "harmonic.wav"
    target.write_bytes(b"sentinel")
    r = run("separate", str(song), "-m", "hpss", "-o", str(out))
    assert r.exit_code == 0 and "skipped" in r.output
    assert target.read_bytes() == b"sentinel"
    assert run("separate", str(song), "-m", "hpss", "-o", str(out), "--force").exit_code == 0
    assert sf.info(str(target)).frames == sf.info(str(song)).frames


def test_folder_input_recursive_audio_only(tmp_path: Path) -> None:
    src = tmp_path / "lib"
    write(src / "a.wav", tone(0.5))
    write(src / "deep" / "b.flac", tone(0.5, seed=2))
    (src / "notes.txt").write_text("not audio")
    out = tmp_path / "sep"
    r = run("separate", str(src), "-m", "hpss", "-o", str(out), "--format", "flac", "--bit-depth", "24")
    assert r.exit_code == 0, r.output
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.flac")) == [
        "a/harmonic.flac", "a/percussive.flac", "b/harmonic.flac", "b/percussive.flac"]
    assert sf.info(str(out / "b" / "harmonic.flac")).subtype == "PCM_24"


@pytest.mark.parametrize("subtype", ["PCM_U8", "PCM_16", "PCM_24", "FLOAT"])
def test_input_sample_formats(tmp_path: Path, subtype: str) -> None:
    path = write(tmp_path / f"s_{subtype}.wav", tone(0.6), subtype=subtype)
    out = tmp_path / "sep"
    assert run("separate", str(path), "-m", "hpss", "-o", str(out)).exit_code == 0
    assert sf.info(str(out / path.stem / "harmonic.wav")).frames == sf.info(str(path)).frames


@pytest.mark.parametrize("rate,channels", [(8000, 1), (96000, 2), (44100, 1), (22050, 2)])
def test_rates_and_channels_are_kept(tmp_path: Path, rate: int, channels: int) -> None:
    # band-limited input (no noise near Nyquist, which any resampler's filter removes)
    path = write(tmp_path / "x.wav", tone(0.7, sr=rate, channels=channels, noise=0.0), sr=rate, subtype="FLOAT")
    out = tmp_path / "sep"
    r = run("separate", str(path), "-m", "hpss", "-o", str(out), "--bit-depth", "32")
    assert r.exit_code == 0, r.output
    h, sr = sf.read(out / "x" / "harmonic.wav", always_2d=True)
    p, _ = sf.read(out / "x" / "percussive.wav", always_2d=True)
    x, _ = sf.read(path, always_2d=True)
    assert sr == rate and h.shape == x.shape
    # resampled there and back: the stems still sum to the input (away from the edges)
    core = slice(rate // 20, -rate // 20)
    assert np.sqrt(np.mean((h + p - x)[core] ** 2)) < 1e-3 * np.sqrt(np.mean(x**2))


def test_one_sample_file(tmp_path: Path) -> None:
    path = write(tmp_path / "one.wav", np.full((2, 1), 0.5, np.float32), subtype="FLOAT")
    out = tmp_path / "sep"
    assert run("separate", str(path), "-m", "hpss", "-o", str(out)).exit_code == 0
    assert sf.info(str(out / "one" / "harmonic.wav")).frames == 1


def _zero_length(p: Path) -> Path:
    sf.write(str(p), np.zeros((0, 2)), 44100)
    return p


def _truncated(p: Path) -> Path:
    write(p, tone(0.5))
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    return p


def _nan(p: Path) -> Path:
    x = tone(0.5)
    x[0, 1000] = np.nan
    return write(p, x, subtype="FLOAT")


def _inf(p: Path) -> Path:
    x = tone(0.5)
    x[1, 20000] = np.inf
    return write(p, x, subtype="FLOAT")


BAD = {
    "missing": (lambda p: p, "no such file"),  # never created
    "empty": (lambda p: (p.write_bytes(b""), p)[1], "empty file"),
    "zero_length": (_zero_length, "no audio"),
    "truncated": (_truncated, "truncated"),
    "text": (lambda p: (p.write_text("this is not audio\n" * 50), p)[1], "not a readable audio file"),
    "nan": (_nan, "NaN or Inf"),
    "inf": (_inf, "NaN or Inf"),
    "six_channels": (lambda p: write(p, tone(0.5, channels=6)), "6 channels"),
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_file_fails_alone(tmp_path: Path, kind: str) -> None:
    make, cause = BAD[kind]
    (tmp_path / "in").mkdir()
    bad = make(tmp_path / "in" / f"bad_{kind}.wav")
    good = write(tmp_path / "in" / "good.wav", tone(0.5))
    out = tmp_path / "sep"
    r = run("separate", str(bad), str(good), "-m", "hpss", "-o", str(out))
    assert r.exit_code == 1
    errs = errors(r)
    assert len(errs) == 1, r.output
    assert str(bad) in errs[0] and cause in errs[0]
    assert "Traceback" not in r.output
    assert (out / "good" / "harmonic.wav").exists()  # the rest of the batch is done
    assert not (out / bad.stem).exists()  # no folder left behind for the failed track
    assert not list(out.rglob(".*partial*"))


@pytest.mark.parametrize("existed", [False, True])
def test_failed_track_removes_only_the_folders_it_made(tmp_path: Path, existed: bool) -> None:
    """A file that fails mid-read (NaN found after the writer opened its temporary files) leaves
    neither stems nor the folders made for them; a folder that was there before stays."""
    bad = _nan(tmp_path / "bad.wav")
    out = tmp_path / "deep" / "sep"
    if existed:
        out.mkdir(parents=True)
    r = run("separate", str(bad), "-m", "hpss", "-o", str(out))
    assert r.exit_code == 1 and "NaN or Inf" in r.output
    assert out.exists() == existed
    assert (tmp_path / "deep").exists() == existed
    assert not (out / "bad").exists()


def test_a_stem_file_that_cannot_be_opened_fails_its_track_only(tmp_path: Path, monkeypatch) -> None:
    """libsndfile refusing to create a temporary file (a RuntimeError, not an OSError: a full
    disk, a name too long) fails that track with one line, leaves no temporary file and no
    folder made for it, and the batch goes on."""
    import stemcli.audio as audio

    opened = []

    class Refusing(sf.SoundFile):
        def __init__(self, file, mode="r", *args, **kwargs):
            if mode == "w":
                opened.append(file)
                if len(opened) == 2:  # the first track's second stem
                    raise sf.LibsndfileError(2, f"Error opening {file!r}: ")
            super().__init__(file, mode, *args, **kwargs)

    a = write(tmp_path / "in" / "a.wav", tone(0.5, seed=1))
    b = write(tmp_path / "in" / "b.wav", tone(0.5, seed=2))
    monkeypatch.setattr(audio.sf, "SoundFile", Refusing)
    out = tmp_path / "sep"
    r = run("separate", str(a), str(b), "-m", "hpss", "-o", str(out))
    assert r.exit_code == 1
    (err,) = errors(r)
    assert "cannot write" in err and str(out / "a") in err and "Traceback" not in r.output
    assert not (out / "a").exists() and not list(out.rglob(".*partial*"))
    assert sorted(p.name for p in (out / "b").iterdir()) == ["harmonic.wav", "percussive.wav"]


def test_a_folder_removed_by_another_writer_is_made_again(tmp_path: Path, monkeypatch) -> None:
    """Two writers sharing a folder (a template without {track}/): if one aborts and removes the
    folder after the other found it and before the other's file is in it, the other makes it
    again instead of failing its track."""
    import stemcli.audio as audio

    real = audio.make_dirs
    calls = []

    def make_then_lose(folder: Path, made: list) -> None:
        real(folder, made)
        calls.append(folder)
        if len(calls) == 1:
            folder.rmdir()  # the other writer's abort, just now

    monkeypatch.setattr(audio, "make_dirs", make_then_lose)
    song = write(tmp_path / "a.wav", tone(0.5))
    out = tmp_path / "sep"
    r = run("separate", str(song), "-m", "hpss", "-o", str(out), "--template", "{stem}_{track}.{ext}")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == ["harmonic_a.wav", "percussive_a.wav"]


def test_same_track_name_twice_is_not_silently_overwritten(tmp_path: Path) -> None:
    a = write(tmp_path / "x" / "song.wav", tone(0.5, seed=1))
    b = write(tmp_path / "y" / "song.wav", tone(0.5, seed=2))
    out = tmp_path / "sep"
    r = run("separate", str(a), str(b), "-m", "hpss", "-o", str(out))
    assert r.exit_code == 1
    (err,) = errors(r)
    assert str(b) in err and "would also be written" in err
    ref = CliRunner().invoke(cli, ["separate", str(a), "-m", "hpss", "-o", str(tmp_path / "ref"), "--bit-depth", "32"])
    assert ref.exit_code == 0
    # the stems that exist are a's, not b's
    got, _ = sf.read(out / "song" / "harmonic.wav")
    want, _ = sf.read(tmp_path / "ref" / "song" / "harmonic.wav")
    assert np.abs(got - want).max() < 1e-3


@pytest.mark.parametrize(
    "args,needle",
    [
        (["-m", "hpsss"], "did you mean 'hpss'"),
        (["-m", "hpss", "--stems", "vocals"], "no stem 'vocals'"),
        (["-m", "hpss", "--overlap", "1.5"], "overlap must be in [0, 1)"),
        (["-m", "hpss", "--template", "../{track}/{stem}.{ext}"], "must not contain '..'"),
        (["-m", "hpss", "--template", "/abs/{track}/{stem}.{ext}"], "relative path"),
        (["-m", "hpss", "--template", "{track}.{ext}"], "must contain {stem}"),
        (["-m", "hpss", "--template", "{song}/{stem}.{ext}"], "unknown field"),
        (["-m", "hpss", "--segment", "0"], "segment must be positive"),
        (["-m", "hpss", "--format", "flac", "--bit-depth", "32"], "does not support"),
    ],
)
def test_bad_options_fail_before_any_work(tmp_path: Path, song: Path, args: list[str], needle: str) -> None:
    out = tmp_path / "sep"
    r = run("separate", str(song), "-o", str(out), *args)
    assert r.exit_code != 0
    assert needle in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output
    assert not out.exists()


def test_unwritable_output_dir(tmp_path: Path, song: Path) -> None:
    blocker = tmp_path / "sep"
    blocker.write_text("a file where the output folder should be")
    r = run("separate", str(song), "-m", "hpss", "-o", str(blocker))
    assert r.exit_code == 1
    (err,) = errors(r)
    assert "cannot write" in err and str(blocker) in err
    assert blocker.read_text().startswith("a file")


def test_interrupt_leaves_no_half_written_stem(tmp_path: Path, song: Path) -> None:
    from stemcli.api import separate_file
    from conftest import IdentitySeparator

    class Interrupting(IdentitySeparator):
        def separate(self, mix):
            if self.calls >= 1:
                raise KeyboardInterrupt
            return super().separate(mix)

    outs = {"all": tmp_path / "o" / "all.wav", "zero": tmp_path / "o" / "zero.wav"}
    outs["all"].parent.mkdir()
    outs["zero"].write_bytes(b"keep me")
    with pytest.raises(KeyboardInterrupt):
        separate_file(song, Interrupting(segment=0.5), outs)
    assert not outs["all"].exists()
    assert outs["zero"].read_bytes() == b"keep me"
    assert sorted(p.name for p in outs["all"].parent.iterdir()) == ["zero.wav"]


def test_help_does_not_import_torch() -> None:
    code = "import sys; from stemcli.cli import cli\ntry:\n    cli(['--help'])\nexcept SystemExit:\n    pass\nprint('torch' in sys.modules, 'onnxruntime' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False False"


def test_python_dash_m_entry() -> None:
    r = subprocess.run([sys.executable, "-m", "stemcli", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and "stemcli" in r.stdout


def test_parallel_jobs_give_the_same_stems(tmp_path: Path) -> None:
    src = tmp_path / "lib"
    for i in range(3):
        write(src / f"t{i}.wav", tone(0.6, seed=i), subtype="FLOAT")
    one, two = tmp_path / "one", tmp_path / "two"
    assert run("separate", str(src), "-m", "hpss", "-o", str(one), "--bit-depth", "32", "-q").exit_code == 0
    r = run("separate", str(src), "-m", "hpss", "-o", str(two), "--bit-depth", "32", "-q", "-j", "2")
    assert r.exit_code == 0, r.output
    for f in sorted(one.rglob("*.wav")):
        a, _ = sf.read(f)
        b, _ = sf.read(two / f.relative_to(one))
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert len(list(two.rglob("*.wav"))) == 6


def test_musdb_mixtures_are_named_by_their_folder(tmp_path: Path) -> None:
    for name in ("Artist - One", "Artist - Two"):
        write(tmp_path / "test" / name / "mixture.wav", tone(0.5))
    out = tmp_path / "est"
    r = run("separate", str(tmp_path / "test"), "-m", "hpss", "-o", str(out), "-q")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == ["Artist - One", "Artist - Two"]
