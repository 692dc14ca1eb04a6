"""MUSDB-layout reader, StemDataset augmentation, powerset sampling (numpy-generated folders)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from stemcli.data.datasets import EnsembleDataset, StemDataset, instrument_of, list_tracks, powerset_examples

SR = 8000  # small rate keeps the files tiny; the reader is rate-agnostic
STEMS = ("vocals", "drums", "bass", "other")


def _write(path: Path, audio: np.ndarray, sr: int = SR, subtype: str = "FLOAT") -> None:
    """audio: [shape=(channels, time)]"""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), audio.T, sr, subtype=subtype)


def _noise_track(folder: Path, rng: np.random.Generator, frames: int, ext: str = "wav") -> dict[str, np.ndarray]:
    stems = {s: (0.1 * rng.standard_normal((2, frames))).astype(np.float32) for s in STEMS}
    for s, x in stems.items():
        _write(folder / f"{s}.{ext}", x, subtype="FLOAT" if ext == "wav" else "PCM_24")
    _write(folder / f"mixture.{ext}", sum(stems.values()), subtype="FLOAT" if ext == "wav" else "PCM_24")
    return stems


@pytest.fixture(scope="module")
def musdb(tmp_path_factory) -> tuple[Path, dict[str, dict[str, np.ndarray]]]:
    """A MUSDB-style folder: train/{a,b,c} (c as FLAC), valid/{d}."""
    root = tmp_path_factory.mktemp("musdb")
    rng = np.random.default_rng(0)
    data = {}
    for split, name, frames, ext in [("train", "a", 3 * SR, "wav"), ("train", "b", 2 * SR + 17, "wav"),
                                     ("train", "c", 4 * SR, "flac"), ("valid", "d", 3 * SR, "wav")]:
        data[name] = _noise_track(root / split / name, rng, frames, ext)
    return root, data


def test_list_tracks_reads_layout(musdb):
    root, data = musdb
    tracks = list_tracks(root, "train")
    assert [t.name for t in tracks] == ["a", "b", "c"]
    assert all(t.sample_rate == SR and t.channels == 2 for t in tracks)
    assert [t.frames for t in tracks] == [3 * SR, 2 * SR + 17, 4 * SR]
    assert tracks[0].sources == tuple(sorted(STEMS))  # sources=None: every non-mixture file
    assert list_tracks(root, "train", STEMS)[0].sources == STEMS
    assert [t.name for t in list_tracks(root / "valid", None)] == ["d"]


def test_track_read_blocks_and_padding(musdb):
    root, data = musdb
    a, c = list_tracks(root, "train", STEMS)[0], list_tracks(root, "train", STEMS)[2]
    block = a.read("drums", start=1000, frames=500)
    assert block.shape == (2, 500) and block.dtype == np.float32
    np.testing.assert_array_equal(block, data["a"]["drums"][:, 1000:1500])
    tail = a.read("bass", start=a.frames - 100, frames=300)  # past the end: zero padded
    np.testing.assert_array_equal(tail[:, :100], data["a"]["bass"][:, -100:])
    assert not tail[:, 100:].any()
    np.testing.assert_allclose(c.read("vocals", 10, 50), data["c"]["vocals"][:, 10:60], atol=1e-6)  # 24-bit flac
    assert a.read("mixture").shape == (2, a.frames)


def test_mixture_missing_is_sum_of_stems(tmp_path):
    rng = np.random.default_rng(1)
    stems = {s: rng.standard_normal((1, 400)).astype(np.float32) for s in ("x", "y")}
    for s, v in stems.items():
        _write(tmp_path / "t" / f"{s}.wav", v)
    (track,) = list_tracks(tmp_path, None)
    assert track.channels == 1 and track.sources == ("x", "y")
    np.testing.assert_allclose(track.read("mixture"), stems["x"] + stems["y"], atol=1e-6)


def test_bad_folders_raise_clear_errors(tmp_path, musdb):
    with pytest.raises(ValueError, match="does not exist"):
        list_tracks(tmp_path / "nope")
    (tmp_path / "train").mkdir()
    with pytest.raises(ValueError, match="no track folders"):
        list_tracks(tmp_path, "train")
    (tmp_path / "train" / "empty").mkdir()
    with pytest.raises(ValueError, match="empty.*no stem files"):
        list_tracks(tmp_path, "train")
    root, _ = musdb
    with pytest.raises(ValueError, match=r"train/a.*missing stem file\(s\) guitar"):
        list_tracks(root, "train", ("vocals", "guitar"))
    _write(tmp_path / "mixed" / "t" / "x.wav", np.zeros((2, 100), np.float32), sr=8000)
    _write(tmp_path / "mixed" / "t" / "y.wav", np.zeros((2, 100), np.float32), sr=16000)
    with pytest.raises(ValueError, match="different sample rates"):
        list_tracks(tmp_path / "mixed", None)
    with pytest.raises(ValueError, match="sample rate 8000 Hz, dataset expects 44100"):
        StemDataset(root, "train", seconds=1.0, sample_rate=44100)


@pytest.mark.parametrize("augment", [True, False])
def test_sample_shapes_and_mix_is_sum(musdb, augment):
    root, _ = musdb
    ds = StemDataset(root, "train", STEMS, seconds=0.5, sample_rate=SR, augment=augment)
    assert len(ds) == 3
    rng = np.random.default_rng(5)
    for _ in range(10):
        mix, stems = ds.sample(rng)
        assert mix.shape == (2, SR // 2) and stems.shape == (4, 2, SR // 2)
        assert mix.dtype == stems.dtype == np.float32
        np.testing.assert_allclose(mix, stems.sum(0), atol=1e-6)
        assert np.abs(stems).max() > 0


def test_unaugmented_sample_is_an_aligned_excerpt(musdb):
    root, data = musdb
    ds = StemDataset(root, "train", STEMS, seconds=0.25, sample_rate=SR, augment=False)
    n = ds.frames
    rng = np.random.default_rng(2)
    for _ in range(5):
        _, stems = ds.sample(rng)
        # find the track and the start from the vocals and check every stem uses the same ones
        found = False
        for name, d in data.items():
            v = d["vocals"][0]
            # tolerance: track c is 24-bit FLAC
            hits = [s for s in np.flatnonzero(np.abs(v[: v.size - n + 1] - stems[0, 0, 0]) < 1e-6)
                    if np.allclose(v[s : s + n], stems[0, 0], atol=1e-6)]
            if hits:
                s = hits[0]
                for k, stem in enumerate(STEMS):
                    np.testing.assert_allclose(stems[k], d[stem][:, s : s + n], atol=1e-6)
                found = True
        assert found


def _dc_dataset(root: Path, tracks: int = 3, frames: int = SR) -> dict[str, float]:
    """Stems of constant value: left = v, right = 2 v, v distinct per stem, same in every track."""
    values = {s: 0.05 * (k + 1) for k, s in enumerate(STEMS)}
    for t in range(tracks):
        for s, v in values.items():
            _write(root / "train" / f"t{t}" / f"{s}.wav", np.stack([np.full(frames, v), np.full(frames, 2 * v)]).astype(np.float32))
    return values


def test_augmentation_gain_swap_polarity(tmp_path):
    values = _dc_dataset(tmp_path)
    ds = StemDataset(tmp_path, "train", STEMS, seconds=0.1, sample_rate=SR, augment=True, remix_prob=0.5)
    rng = np.random.default_rng(0)
    swaps, signs = set(), set()
    for _ in range(40):
        mix, stems = ds.sample(rng)
        np.testing.assert_allclose(mix, stems.sum(0), atol=1e-6)
        for k, s in enumerate(STEMS):
            left, right = float(stems[k, 0, 0]), float(stems[k, 1, 0])
            assert np.all(stems[k, 0] == left) and np.all(stems[k, 1] == right)  # a gain, no filtering
            swapped = abs(left) > abs(right)
            gain = (right if swapped else left) / values[s]
            assert 0.25 - 1e-5 <= abs(gain) <= 1.25 + 1e-5
            assert (left / right) == pytest.approx(2.0 if swapped else 0.5, rel=1e-5)
            swaps.add(swapped)
            signs.add(gain > 0)
    assert swaps == {True, False} and signs == {True, False}


def test_silent_excerpts_are_redrawn(tmp_path):
    frames = 2 * SR
    for t in range(2):
        half = np.zeros((2, frames), np.float32)
        half[:, frames // 2 :] = 0.1  # vocals only sing in the second half
        _write(tmp_path / "train" / f"t{t}" / "vocals.wav", half)
        _write(tmp_path / "train" / f"t{t}" / "drums.wav", np.zeros((2, frames), np.float32))  # always silent
    ds = StemDataset(tmp_path, "train", ("vocals", "drums"), seconds=0.2, sample_rate=SR)
    rng = np.random.default_rng(3)
    silent_vocals = 0
    for _ in range(60):
        mix, stems = ds.sample(rng)
        assert not stems[1].any()  # an all-silent stem is allowed and does not hang
        silent_vocals += not np.abs(stems[0]).max() > 0
    # one draw lands in the silent half about half of the time; four tries make it ~6 %
    assert silent_vocals < 60 * 0.2


def _ramp_dataset(root: Path, tracks: int = 3, frames: int = SR) -> None:
    """Every stem of track t is the same strictly positive ramp ``1 + t + i / frames`` (twice it on
    the right): a stem's excerpt divided by its first sample names its track and start."""
    for t in range(tracks):
        ramp = (1.0 + t + np.arange(frames) / frames).astype(np.float32)
        for s in STEMS:
            _write(root / "train" / f"t{t}" / f"{s}.wav", np.stack([ramp, 2 * ramp]))  # right = 2 x left


def _coherent(stems: np.ndarray) -> bool:
    """Whether every stem is the same excerpt (same track, same start) up to its gain."""
    shapes = stems[:, 0] / stems[:, 0, :1]
    return bool(np.allclose(shapes, shapes[:1], rtol=0, atol=1e-6))


def test_coherent_examples_keep_one_start_and_their_own_gains(tmp_path):
    _ramp_dataset(tmp_path)
    ds = StemDataset(tmp_path, "train", STEMS, seconds=0.1, sample_rate=SR, coherent_prob=1.0)
    rng = np.random.default_rng(0)
    shapes, distinct_gains, mixed_signs, mixed_swaps = set(), 0, 0, 0
    for _ in range(30):
        mix, stems = ds.sample(rng)
        np.testing.assert_allclose(mix, stems.sum(0), atol=1e-6)
        assert _coherent(stems)
        swapped = np.abs(stems[:, 0, 0]) > np.abs(stems[:, 1, 0])  # the 2 x ramp channel on the left
        gains = np.where(swapped, stems[:, 1, 0], stems[:, 0, 0])  # gain_k x the same ramp sample
        distinct_gains += len(set(np.round(np.abs(gains), 5).tolist())) == len(STEMS)
        mixed_signs += len(set(np.sign(gains).tolist())) == 2
        mixed_swaps += len(set(swapped.tolist())) == 2
        shapes.add(round(float(stems[0, 0, -1] / stems[0, 0, 0]), 6))  # names the track and start
    # gain, polarity and channel swap are still drawn per stem, not per example
    assert distinct_gains == 30 and mixed_signs > 10 and mixed_swaps > 10
    assert len(shapes) > 20  # and the track and start per example


@pytest.mark.parametrize("prob, low, high", [(0.0, 0, 0), (0.5, 60, 140), (1.0, 200, 200)])
def test_coherent_share_follows_the_probability(tmp_path, prob, low, high):
    _ramp_dataset(tmp_path)
    ds = StemDataset(tmp_path, "train", STEMS, seconds=0.1, sample_rate=SR, remix_prob=0.5, coherent_prob=prob)
    rng = np.random.default_rng(1)
    count = sum(_coherent(ds.sample(rng)[1]) for _ in range(200))
    assert low <= count <= high


def test_coherent_zero_draws_what_the_sampler_drew_before_the_option(tmp_path):
    """coherent_prob=0 takes no random number of its own, so runs without the option (every
    shipped model) sample exactly what they sampled before it; these values are the sampler's
    output before the option existed (commit 5eab7e6), same data and seed."""
    _ramp_dataset(tmp_path)
    rng = np.random.default_rng(7)
    ds = StemDataset(tmp_path, "train", STEMS, seconds=0.1, sample_rate=SR, coherent_prob=0.0)
    before = [([-7.308267, 8.187131, -0.660054, 4.048499], [-3.756574, 4.200554, -1.420956, 8.345786]),
              ([-6.487376, 1.535635, -2.228494, -2.205382], [-3.329834, 3.214333, -1.163936, -1.147695]),
              ([3.93398, -2.222311, 3.119433, 2.832214], [8.093743, -4.642728, 1.620767, 1.456077])]
    for first, last in before:
        stems = ds.sample(rng)[1]
        np.testing.assert_allclose(stems[:, 0, 0], first, atol=2e-6)
        np.testing.assert_allclose(stems[:, 1, -1], last, atol=2e-6)
    assert rng.random() == pytest.approx(0.9787478844112216)  # and no more random numbers


def test_coherent_example_keeps_a_silent_stem_silent(tmp_path):
    frames = 2 * SR
    ramp = (1.0 + np.arange(frames) / frames).astype(np.float32)
    late = np.where(np.arange(frames) >= frames // 2, 0.1, 0.0).astype(np.float32)  # drums from halfway
    _write(tmp_path / "train" / "t0" / "vocals.wav", np.stack([ramp, ramp]))
    _write(tmp_path / "train" / "t0" / "drums.wav", np.stack([late, late]))
    ds = StemDataset(tmp_path, "train", ("vocals", "drums"), seconds=0.2, sample_rate=SR, coherent_prob=1.0)
    n = ds.frames
    rng = np.random.default_rng(2)
    silent = 0
    for _ in range(60):
        _, stems = ds.sample(rng)
        # the start s from the vocals' ramp, gain cancelled: r = (F + s + n - 1) / (F + s)
        r = float(stems[0, 0, -1] / stems[0, 0, 0])
        start = round((frames * (1 - r) + n - 1) / (r - 1))
        drums_silent = not np.abs(stems[1]).max() > 0
        assert drums_silent == (start + n <= frames // 2)  # silent exactly where the song's drums are
        silent += drums_silent
    assert 10 < silent < 50  # not re-drawn: a coherent example keeps the song's silence


def test_coherent_example_silent_in_every_stem_is_drawn_again(tmp_path):
    frames = 2 * SR
    late = np.where(np.arange(frames) >= frames // 4, 0.1, 0.0).astype(np.float32)  # every stem from a quarter in
    for s in STEMS:
        _write(tmp_path / "train" / "t0" / f"{s}.wav", np.stack([late, late]))
    ds = StemDataset(tmp_path, "train", STEMS, seconds=0.2, sample_rate=SR, coherent_prob=1.0)
    rng = np.random.default_rng(5)
    # a start lands in the silent quarter about a fifth of the time; eight tries make it ~1e-6
    assert all(np.abs(ds.sample(rng)[1]).max() > 0 for _ in range(60))


def test_fixed_excerpts_are_deterministic(musdb):
    root, _ = musdb
    ds = StemDataset(root, "train", STEMS, seconds=0.5, sample_rate=SR)
    a, b, c = ds.fixed_excerpts(4, seed=1), ds.fixed_excerpts(4, seed=1), ds.fixed_excerpts(4, seed=2)
    assert len(a) == 4
    for (ma, sa), (mb, sb) in zip(a, b):
        np.testing.assert_array_equal(ma, mb)
        np.testing.assert_array_equal(sa, sb)
        np.testing.assert_allclose(ma, sa.sum(0), atol=1e-6)
    assert any(not np.array_equal(x[0], y[0]) for x, y in zip(a, c))
    np.testing.assert_array_equal(ds.example(7)[0], ds.example(7)[0])


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6])
def test_powerset_is_every_subset_with_target(n):
    parts = [f"p{k}" for k in range(n)]
    target = parts[n // 2]
    got = powerset_examples(parts, target)
    brute = {
        tuple(p for p, keep in zip(parts, mask) if keep)
        for mask in itertools.product([0, 1], repeat=n)
        if mask[n // 2]
    }
    assert len(got) == len(set(got)) == 2 ** (n - 1)
    assert set(got) == brute
    assert (target,) in got


def test_powerset_rejects_bad_input():
    with pytest.raises(ValueError, match="not one of the parts"):
        powerset_examples(["a", "b"], "c")
    with pytest.raises(ValueError, match="distinct"):
        powerset_examples(["a", "a"], "a")


def test_instrument_of():
    assert instrument_of("violin2") == "violin" and instrument_of("double_bass") == "double_bass"


def test_ensemble_dataset_powerset(tmp_path):
    # Stem values are powers of two, so the mix value tells which parts were summed.
    pieces = {"q1": ("violin", "violin2", "cello", "flute"), "q2": ("cello", "violin"), "q3": ("flute", "oboe")}
    value = {"violin": 1, "violin2": 2, "cello": 4, "flute": 8, "oboe": 16}
    for name, stems in pieces.items():
        for s in stems:
            _write(tmp_path / "train" / name / f"{s}.wav", np.full((2, SR), 0.01 * value[s], np.float32))
    ds = EnsembleDataset(tmp_path, "violin", seconds=0.1, sample_rate=SR, augment=False)
    # q1: groups violin(+violin2), cello, flute -> 4 subsets; q2: 2; q3 has no violin
    assert len(ds) == 4 + 2
    seen = set()
    for i in range(len(ds)):
        mix, target = ds.example(i)
        assert target.shape == (1, 2, ds.frames)
        k, subset = ds.examples[i]
        assert target[0, 0, 0] == pytest.approx(0.01 * (1 + 2) if ds.tracks[k].name == "q1" else 0.01)
        expected = sum(value[s] for g in subset for s in ds.groups[k][g])
        assert mix[0, 0] == pytest.approx(0.01 * expected, rel=1e-5)
        np.testing.assert_allclose(mix, mix[:, :1].repeat(ds.frames, 1))
        seen.add((ds.tracks[k].name, subset))
    assert ("q1", ("violin",)) in seen and ("q1", ("cello", "flute", "violin")) in seen
    mix, target = EnsembleDataset(tmp_path, "violin", seconds=0.1, sample_rate=SR).sample(np.random.default_rng(0))
    assert mix.shape == (2, 800) and target.shape == (1, 2, 800)
    with pytest.raises(ValueError, match="no track has a 'tuba' stem"):
        EnsembleDataset(tmp_path, "tuba", seconds=0.1, sample_rate=SR)
