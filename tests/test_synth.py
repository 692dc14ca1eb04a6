"""`stemcli synth`: tiny renders per kind (layout, exact mixture, no silent stem, determinism)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from stemcli.data.datasets import StemDataset, list_tracks
from stemcli.data.midi import Note, Part, smf_bytes
from stemcli.data.synth import assign_splits, render_dataset, rms_dbfs, write_float_wav

needs_fluidsynth = pytest.mark.skipif(shutil.which("fluidsynth") is None, reason="fluidsynth binary not installed (apt-get install fluidsynth)")
needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng binary not installed (apt-get install espeak-ng)")

SECONDS = 2.0
EXPECTED_STEMS = {"pop": {"vocals", "drums", "bass", "other"}, "speech": {"speaker1", "speaker2"}}


def _render(root: Path, kind: str, jobs: int = 1) -> dict:
    return render_dataset(root, kind=kind, tracks=3, seconds=SECONDS, seed=7, jobs=jobs, progress=False, command="test")


@pytest.fixture(scope="module", params=[
    pytest.param("pop", marks=needs_fluidsynth),
    pytest.param("ensemble", marks=needs_fluidsynth),
    pytest.param("speech", marks=needs_espeak),
])
def rendered(request, tmp_path_factory):
    kind = request.param
    a = tmp_path_factory.mktemp(f"{kind}_a")
    b = tmp_path_factory.mktemp(f"{kind}_b")
    card = _render(a, kind, jobs=1)
    # Another run must give the same bytes; pop also checks that the job count does not matter
    # (ensemble/speech stay in-process: a spawned worker would re-import music21 and re-parse).
    _render(b, kind, jobs=2 if kind == "pop" else 1)
    return kind, a, b, card


def test_layout_and_card(rendered):
    kind, root, _, card = rendered
    assert card["kinds"] == [kind] and card["seed"] == 7 and card["tracks"] == 3
    assert card["counts"] == {"train": 1, "valid": 1, "test": 1}  # 3 tracks: one per split
    assert json.loads((root / "dataset.json").read_text()) == card
    for split in ("train", "valid", "test"):
        (track,) = list_tracks(root, split)
        entry = next(t for t in card["track_list"] if t["name"] == track.name)
        assert entry["split"] == split
        assert (track.path / "mixture.wav").is_file()
        assert set(track.sources) == set(entry["stems"])
        if kind in EXPECTED_STEMS:
            assert set(track.sources) == EXPECTED_STEMS[kind]
        else:
            assert 2 <= len(track.sources) <= 5
        assert track.sample_rate == 44100 and track.channels == 2 and track.frames == int(SECONDS * 44100)
        for stem in track.sources + ("mixture",):
            assert sf.info(str(track.file(stem))).subtype == "FLOAT"


def test_mixture_is_exact_sum_and_no_stem_is_silent(rendered):
    _, root, _, _ = rendered
    for track in list_tracks(root, "train") + list_tracks(root, "valid") + list_tracks(root, "test"):
        stems = [track.read(s) for s in track.sources]
        for s, x in zip(track.sources, stems):
            assert rms_dbfs(x) > -50.0, f"{track.name}/{s} is silent"
            assert np.isfinite(x).all()
        np.testing.assert_allclose(track.read("mixture"), np.sum(stems, axis=0), atol=1e-6)
        assert np.abs(track.read("mixture")).max() <= 1.0


def test_deterministic_bytes(rendered):
    _, a, b, _ = rendered
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert files_a == files_b and len(files_a) > 3
    for rel in files_a:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


def test_ensemble_stems_are_named_instruments(rendered):
    kind, root, _, card = rendered
    if kind != "ensemble":
        pytest.skip("ensemble only")
    from stemcli.data.datasets import instrument_of
    from stemcli.data.ensemble import INSTRUMENT_NAMES

    for entry in card["track_list"]:
        for stem in entry["stems"]:
            assert instrument_of(stem) in INSTRUMENT_NAMES
        assert entry["piece"].endswith(".mxl")
    # the powerset dataset reads the render: target = first instrument of the first track
    from stemcli.data.datasets import EnsembleDataset

    (track,) = list_tracks(root, "train")
    target = instrument_of(track.sources[0])
    groups = {instrument_of(s) for s in track.sources}
    ds = EnsembleDataset(root, target, "train", seconds=SECONDS, augment=False)  # whole track: start 0
    assert len(ds) == 2 ** (len(groups) - 1)
    assert len(ds.examples[-1][1]) == len(groups)  # the last subset is the full ensemble
    mix, stem = ds.example(len(ds) - 1)
    assert stem.shape == (1, 2, int(SECONDS * 44100))
    np.testing.assert_allclose(mix, track.read("mixture"), atol=1e-5)
    target_parts = [track.read(s) for s in track.sources if instrument_of(s) == target]
    np.testing.assert_allclose(stem[0], np.sum(target_parts, axis=0), atol=1e-6)


@needs_fluidsynth
def test_pop_dataset_feeds_stem_dataset(rendered):
    kind, root, _, _ = rendered
    if kind != "pop":
        pytest.skip("pop only")
    ds = StemDataset(root, "train", seconds=1.0)
    mix, stems = ds.sample(np.random.default_rng(0))
    assert stems.shape == (4, 2, 44100)
    np.testing.assert_allclose(mix, stems.sum(0), atol=1e-6)


@needs_fluidsynth
def test_rendered_note_has_the_right_pitch(tmp_path):
    """A4 (MIDI 69) on a flute renders with its fundamental at 440 Hz."""
    from stemcli.data.render import available_soundfonts, render_stems

    part = Part([Note(0.0, 1.8, 69, 100)], program=73, channel=0, controllers={91: 0, 93: 0})
    out = render_stems({"flute": [part]}, bpm=120.0, seconds=1.0, soundfont=available_soundfonts()[0],
                       reverb=None, chorus=False)
    x = out["flute"].mean(0)
    assert x.shape == (44100,)
    spec = np.abs(np.fft.rfft(x[4410:] * np.hanning(x.size - 4410)))
    freqs = np.fft.rfftfreq(x.size - 4410, 1 / 44100)
    band = (freqs > 100) & (freqs < 2000)
    peak = freqs[band][np.argmax(spec[band])]
    assert abs(peak - 440.0) < 6.0, peak


def test_smf_bytes_structure():
    data = smf_bytes([Part([Note(0, 1, 60, 100), Note(1, 1, 64, 90)], program=5, channel=2)], bpm=120, end_beats=4)
    assert data[:4] == b"MThd" and data[14:18] == b"MTrk"
    assert int.from_bytes(data[18:22], "big") == len(data) - 22
    assert b"\xff\x51\x03\x07\xa1\x20" in data  # 500000 us per beat = 120 bpm
    assert bytes([0xC2, 5]) in data and bytes([0x92, 60, 100]) in data and data.endswith(b"\xff\x2f\x00")


def test_float_wav_roundtrip_and_is_reproducible(tmp_path):
    x = np.random.default_rng(0).standard_normal((2, 1000)).astype(np.float32)
    write_float_wav(tmp_path / "a.wav", x, 44100)
    write_float_wav(tmp_path / "b.wav", x, 44100)
    assert (tmp_path / "a.wav").read_bytes() == (tmp_path / "b.wav").read_bytes()
    y, sr = sf.read(str(tmp_path / "a.wav"), dtype="float32", always_2d=True)
    assert sr == 44100 and sf.info(str(tmp_path / "a.wav")).subtype == "FLOAT"
    np.testing.assert_array_equal(y.T, x)


@pytest.mark.parametrize("tracks", [1, 2, 3, 10, 160])
def test_assign_splits(tracks):
    out = assign_splits(tracks, (0.8, 0.1, 0.1), seed=1)
    assert out == assign_splits(tracks, (0.8, 0.1, 0.1), seed=1)
    assert len(out) == tracks and out.count("train") >= 1
    if tracks >= 3:
        assert out.count("valid") >= 1 and out.count("test") >= 1
    if tracks == 160:
        assert (out.count("train"), out.count("valid"), out.count("test")) == (128, 16, 16)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown kind 'rock'"):
        render_dataset(tmp_path, kind="rock", tracks=1, seconds=1, progress=False)
    with pytest.raises(ValueError, match="tracks must be >= 1"):
        render_dataset(tmp_path, kind="pop", tracks=0, seconds=1, progress=False)
    with pytest.raises(ValueError, match="seconds must be > 0"):
        render_dataset(tmp_path, kind="pop", tracks=1, seconds=0, progress=False)
    if shutil.which("fluidsynth"):
        with pytest.raises(ValueError, match="nope.sf2: SoundFont file does not exist"):
            render_dataset(tmp_path, kind="pop", tracks=1, seconds=1, soundfont=tmp_path / "nope.sf2", progress=False)
    with pytest.raises(ValueError, match="splits"):
        assign_splits(3, (1.0, -1.0, 0.0), seed=0)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="busy: folder is not empty"):
        render_dataset(tmp_path / "busy", kind="speech", tracks=1, seconds=1, progress=False)
    with pytest.raises(ValueError, match="no dataset.json.*refusing"):
        render_dataset(tmp_path / "busy", kind="speech", tracks=1, seconds=1, progress=False, overwrite=True)
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"


@needs_espeak
def test_overwrite_replaces_an_earlier_render(tmp_path):
    render_dataset(tmp_path, kind="speech", tracks=3, seconds=0.5, seed=1, progress=False, command="a")
    render_dataset(tmp_path, kind="speech", tracks=1, seconds=0.5, seed=2, progress=False, command="b", overwrite=True)
    assert [t.name for s in ("train",) for t in list_tracks(tmp_path, s)] == ["speech00000"]
    assert not (tmp_path / "valid").exists() and not (tmp_path / "test").exists()
    assert json.loads((tmp_path / "dataset.json").read_text())["command"] == "b"


@needs_espeak
def test_sung_vocals_follow_the_melody():
    """espeak-ng lyrics re-pitched by LPC resynthesis sing each note at its pitch."""
    from stemcli.data.sing import sing

    bpm = 120.0
    pitches = [57, 64, 69, 72]  # A3 E4 A4 C5, one second each
    notes = [Note(2.0 * k, 1.9, p, 100) for k, p in enumerate(pitches)]
    a, info = sing(notes, bpm, 4.0, np.random.default_rng(0))
    b, _ = sing(notes, bpm, 4.0, np.random.default_rng(0))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (4 * 44100,) and info["lyrics"]
    checked = 0
    for k, p in enumerate(pitches):
        seg = a[int((k + 0.3) * 44100) : int((k + 0.8) * 44100)].astype(np.float64)
        if np.sqrt(np.mean(seg**2)) < 1e-3:  # a pause inside the spoken phrase
            continue
        ac = np.correlate(seg, seg, "full")[seg.size - 1 :]
        lo = int(44100 / 1000)
        lag = lo + int(np.argmax(ac[lo : int(44100 / 80)]))
        f0 = 44100 / lag
        expected = 440.0 * 2 ** ((p - 69) / 12)
        # vibrato is at most 0.35 semitone; allow half a semitone
        assert abs(12 * np.log2(f0 / expected)) < 0.5, (p, f0, expected)
        checked += 1
    assert checked >= 3


def test_card_records_the_command_as_typed_without_an_explicit_one(tmp_path, monkeypatch):
    import sys

    monkeypatch.setattr(sys, "argv", ["/venv/lib/stemcli/__main__.py", "synth", str(tmp_path / "my data"), "--kind", "speech"])
    render_dataset(tmp_path / "my data", kind="speech", tracks=1, seconds=0.5, seed=1, progress=False)
    card = json.loads((tmp_path / "my data" / "dataset.json").read_text())
    assert card["command"] == f"stemcli synth '{tmp_path / 'my data'}' --kind speech"


@needs_espeak
def test_cli_splits_renders_a_test_only_set(tmp_path):
    """stemcli synth --splits 0,0,1: every track in test/ (a held-out evaluation set); bad
    fractions are one-line errors that leave no folder behind."""
    from click.testing import CliRunner

    from stemcli.cli import cli

    out = tmp_path / "held_out"
    res = CliRunner().invoke(cli, ["synth", str(out), "--kind", "speech", "--tracks", "3", "--seconds", "0.5",
                                   "--splits", "0,0,1", "-q"])
    assert res.exit_code == 0, res.output
    assert [t.name for t in list_tracks(out, "test")] == ["speech00000", "speech00001", "speech00002"]
    assert not (out / "train").exists() and not (out / "valid").exists()
    assert json.loads((out / "dataset.json").read_text())["counts"] == {"test": 3}
    for bad, match in (("0,0", "three non-negative"), ("1,x,1", "expected three numbers"),
                       ("nan,0,1", "three non-negative"), ("0,0,0", "three non-negative")):
        res = CliRunner().invoke(cli, ["synth", str(tmp_path / "bad"), "--kind", "speech", "--splits", bad, "-q"])
        assert res.exit_code == 1 and match in res.output and len(res.output.strip().splitlines()) == 1
        assert not (tmp_path / "bad").exists()
