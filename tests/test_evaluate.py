"""Evaluation (museval wrapper) and the ideal-ratio-mask oracle, on tiny synthetic MUSDB folders.

museval's cost is dominated by the number of stems (4 stereo stems x 3 s ~ 5 s per track), so
the 4-stem runs are few and the others use 2-stem folders.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import soundfile as sf

from stemcli.evaluate import EvaluationError, aggregate, evaluate, find_tracks
from stemcli.oracle import OracleSeparator, ideal_ratio_mask
from stemcli.plugins import Separator

from conftest import load_script

SR = 44100
SECONDS = 3.0


def band_noise(rng: np.random.Generator, n: int, low: float, high: float) -> np.ndarray:
    """Stereo noise between ``low`` and ``high`` Hz over a -40 dB broadband floor, unit RMS.

    Independent channels and the floor keep BSS Eval's correlation matrix well conditioned
    (a panned mono source or exactly empty bands make its SIR/SAR split numerically meaningless).
    """
    spec = np.fft.rfft(rng.standard_normal((2, n)), axis=-1)
    freqs = np.fft.rfftfreq(n, 1 / SR)
    x = np.fft.irfft(spec * ((freqs >= low) & (freqs <= high)), n=n, axis=-1)
    x = x / np.sqrt(np.mean(x**2)) + 0.01 * rng.standard_normal((2, n))
    return x / np.sqrt(np.mean(x**2))


def stereo(x: np.ndarray, pan: float) -> np.ndarray:
    return (x * np.array([[pan], [1 - pan]])).astype(np.float32)


def four_stems(rng: np.random.Generator, seconds: float = SECONDS) -> dict[str, np.ndarray]:
    """Sources in separate bands (drums: short broadband hits), so a ratio mask separates them well."""
    n = int(seconds * SR)
    t = np.arange(n) / SR
    vocals = 0.1 * band_noise(rng, n, 500, 1500) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    bass = 0.15 * band_noise(rng, n, 40, 200)
    other = 0.05 * band_noise(rng, n, 2500, 6000)
    drums = 0.001 * rng.standard_normal((2, n))
    hit = int(0.05 * SR)
    env = np.exp(-np.arange(hit) / (0.005 * SR))
    for start in range(0, n - hit, int(0.25 * SR)):
        drums[:, start : start + hit] += 0.4 * env * rng.standard_normal((2, hit))
    return {
        "vocals": stereo(vocals, 0.5),
        "drums": stereo(drums, 0.4),
        "bass": stereo(bass, 0.5),
        "other": stereo(other, 0.7),
    }


def two_stems(rng: np.random.Generator, seconds: float = SECONDS) -> dict[str, np.ndarray]:
    """A high-band 'vocals' and a low-band 'accompaniment': a 1 kHz split separates them."""
    n = int(seconds * SR)
    return {
        "vocals": stereo(0.1 * band_noise(rng, n, 2000, 4000), 0.6),
        "accompaniment": stereo(0.1 * band_noise(rng, n, 50, 500), 0.4),
    }


def write_set(root: Path, make, n_tracks: int = 2, split: str = "test", seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for i in range(n_tracks):
        folder = root / split / f"track{i}"
        folder.mkdir(parents=True)
        stems = make(rng)
        for name, x in stems.items():
            sf.write(folder / f"{name}.wav", x.T, SR, subtype="FLOAT")
        sf.write(folder / "mixture.wav", sum(stems.values()).T, SR, subtype="FLOAT")
    return root


def write_estimates(data: Path, out: Path, transform, split: str = "test") -> Path:
    """Copy each track's references through ``transform(stems) -> stems`` into ``out/<track>/``."""
    for track in sorted((data / split).iterdir()):
        stems = {p.stem: sf.read(p, dtype="float32")[0].T for p in track.glob("*.wav") if p.stem != "mixture"}
        (out / track.name).mkdir(parents=True)
        for name, x in transform(stems).items():
            sf.write(out / track.name / f"{name}.wav", np.asarray(x).T, SR, subtype="FLOAT")
    return out


@pytest.fixture(scope="module")
def four(tmp_path_factory) -> Path:
    return write_set(tmp_path_factory.mktemp("four"), four_stems)


@pytest.fixture(scope="module")
def two(tmp_path_factory) -> Path:
    return write_set(tmp_path_factory.mktemp("two"), two_stems)


def test_references_as_estimates_with_json_and_plot(four: Path, tmp_path: Path) -> None:
    est = write_estimates(four, tmp_path / "est", lambda s: s)
    out_json, out_png = tmp_path / "r" / "eval.json", tmp_path / "r" / "eval.png"
    lines: list[str] = []
    res = evaluate(None, four, estimates=est, json_out=out_json, plot_out=out_png, progress=False, echo=lines.append)
    assert res["stems"] == ["vocals", "drums", "bass", "other"]
    assert [t["name"] for t in res["tracks"]] == ["track0", "track1"]
    for stem in res["stems"]:
        assert res["per_stem"][stem]["SDR"] > 60  # perfect estimates: museval gives +inf
        assert len(res["per_track"]["track0"][stem]["frames"]["SDR"]) == math.ceil(SECONDS)
    table = "\n".join(lines)
    assert "vocals" in table and "SDR" in table and "inf" in table
    saved = json.loads(out_json.read_text())  # strict JSON: inf written as "inf"
    assert saved["per_stem"]["vocals"]["SDR"] == "inf"
    assert set(saved["per_track"]) == {"track0", "track1"}
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out_png.stat().st_size > 10_000


def test_oracle_separates_well_separated_sources(four: Path, tmp_path: Path) -> None:
    res = evaluate("oracle", four, progress=False, tracks=1, echo=lambda _: None, json_out=tmp_path / "o.json")
    assert res["model"] == "oracle" and res["stems"] == ["vocals", "drums", "bass", "other"]
    assert res["settings"]["oracle"] == {"n_fft": 4096, "hop": 1024, "power": 2.0}
    for stem in res["stems"]:
        assert 10 < res["per_stem"][stem]["SDR"] < 60, stem
    assert json.loads((tmp_path / "o.json").read_text())["per_stem"]["bass"]["SDR"] == pytest.approx(
        res["per_stem"]["bass"]["SDR"]
    )


def test_more_leakage_scores_lower(two: Path, tmp_path: Path) -> None:
    def leak(amount):
        return lambda s: {k: v + amount * sum(o for n, o in s.items() if n != k) for k, v in s.items()}

    quiet = dict(progress=False, echo=lambda _: None, tracks=1)
    small = evaluate(None, two, estimates=write_estimates(two, tmp_path / "a", leak(0.03)), **quiet)
    large = evaluate(None, two, estimates=write_estimates(two, tmp_path / "b", leak(0.3)), **quiet)
    swapped = evaluate(None, two, estimates=write_estimates(two, tmp_path / "w", lambda s: {
        "vocals": s["accompaniment"], "accompaniment": s["vocals"]}), **quiet)
    for stem in ("vocals", "accompaniment"):
        assert small["per_stem"][stem]["SDR"] > large["per_stem"][stem]["SDR"] + 5
        assert small["per_stem"][stem]["SIR"] > large["per_stem"][stem]["SIR"] + 5
        assert small["per_stem"][stem]["SDR"] > 20
        assert swapped["per_stem"][stem]["SDR"] < 0


class SplitAt1k(Separator):
    """Brick-wall split at 1 kHz: 'vocals' above, 'accompaniment' below, plus a stem the data lacks."""

    sources = ("vocals", "accompaniment", "noise")
    sample_rate = SR
    channels = 2
    segment = 1.0

    def separate(self, mix: np.ndarray) -> np.ndarray:
        spec = np.fft.rfft(mix, axis=-1)
        freqs = np.fft.rfftfreq(mix.shape[-1], 1 / SR)
        high = np.fft.irfft(spec * (freqs > 1000), n=mix.shape[-1], axis=-1)
        low = np.fft.irfft(spec * (freqs <= 1000), n=mix.shape[-1], axis=-1)
        return np.stack([high, low, np.zeros_like(mix)], axis=1).astype(np.float32)


def test_model_through_the_api_scores_the_common_stems(two: Path) -> None:
    notes: list[str] = []
    res = evaluate(SplitAt1k(), two / "test", progress=False, oracle=True, echo=notes.append, tracks=["track1"])
    assert res["stems"] == ["vocals", "accompaniment"]
    assert any("no reference for noise" in n for n in notes)
    for stem in res["stems"]:
        assert res["per_stem"][stem]["SDR"] > 15
        gap = res["oracle"]["per_stem"][stem]["SDR"] - res["per_stem"][stem]["SDR"]
        assert res["oracle_gap"][stem] == pytest.approx(gap)
        assert res["oracle_gap_per_track"]["track1"][stem] == pytest.approx(gap)  # one track: same


def test_oracle_hop_is_checked_against_the_model_stft(two: Path) -> None:
    """Without ``n_fft`` the oracle takes the model's STFT: a hop beyond the model's window is
    refused before any track is separated (not checked against the 4096 default)."""
    calls: list[int] = []

    class Short(SplitAt1k):
        n_fft, hop = 1024, 512

        def separate(self, mix: np.ndarray) -> np.ndarray:
            calls.append(mix.shape[-1])
            return super().separate(mix)

    with pytest.raises(EvaluationError, match=r"hop must be in \[1, n_fft\], got 2048 \(n_fft=1024\)"):
        evaluate(Short(), two / "test", progress=False, oracle=True, hop=2048, echo=lambda _: None)
    assert calls == []


def test_oracle_as_model_name(two: Path) -> None:
    res = evaluate("oracle", two, progress=False, echo=lambda _: None, n_fft=2048, hop=512)
    assert res["settings"]["oracle"] == {"n_fft": 2048, "hop": 512, "power": 2.0}
    assert all(res["per_stem"][s]["SDR"] > 20 for s in ("vocals", "accompaniment"))


def test_mismatched_stems_error_clearly(four: Path, tmp_path: Path) -> None:
    est = write_estimates(four, tmp_path / "e", lambda s: {"harmonic": s["vocals"], "percussive": s["drums"]})
    with pytest.raises(EvaluationError, match=r"no stem in common: .* gives harmonic, percussive, the data has vocals"):
        evaluate(None, four, estimates=est, progress=False, echo=lambda _: None)
    with pytest.raises(EvaluationError, match="no stem in common"):
        evaluate("hpss", four, progress=False, echo=lambda _: None)


def test_partial_estimates_are_scored_on_the_intersection(two: Path, tmp_path: Path) -> None:
    est = write_estimates(two, tmp_path / "e", lambda s: {"vocals": s["vocals"]})
    notes: list[str] = []
    res = evaluate(None, two, estimates=est, progress=False, echo=notes.append, tracks=["track1"])
    assert res["stems"] == ["vocals"] and list(res["per_track"]) == ["track1"]
    assert any("has no accompaniment" in n for n in notes)


def test_bad_folders_error_clearly(tmp_path: Path, two: Path) -> None:
    with pytest.raises(EvaluationError, match="no such data folder"):
        find_tracks(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EvaluationError, match="no track found"):
        find_tracks(tmp_path / "empty")
    with pytest.raises(EvaluationError, match="no track named track9"):
        find_tracks(two, tracks=["track9"])
    with pytest.raises(EvaluationError, match="no estimates for track 'track0'"):
        evaluate(None, two, estimates=tmp_path / "empty", progress=False, echo=lambda _: None)
    assert [p.name for p in find_tracks(two / "test")] == ["track0", "track1"]


def test_oracle_masks_sum_to_the_mixture() -> None:
    rng = np.random.default_rng(3)
    refs = rng.standard_normal((3, 2, 20000)).astype(np.float32)
    mix = refs.sum(0)
    for power in (1.0, 2.0):
        est = ideal_ratio_mask(mix, refs, n_fft=1024, hop=256, power=power)
        assert est.shape == refs.shape
        np.testing.assert_allclose(est.sum(0), mix, atol=1e-4)
    with pytest.raises(ValueError, match="references must have shape"):
        ideal_ratio_mask(mix, refs[:, :1])


def test_phase_sensitive_oracle_on_sources_that_cancel() -> None:
    """b = -0.5 a: the mixture is 0.5 a.  A ratio mask splits it 0.8 / 0.2 (IRM2); the clipped
    phase-sensitive mask gives all of it to a (Re(A conj(X)) / |X|^2 = 2, clipped to 1) and
    none to b (-1, clipped to 0): the closest a real mask in [0, 1] can get to both."""
    rng = np.random.default_rng(8)
    a = rng.standard_normal((2, 16000)).astype(np.float32)
    refs = np.stack([a, -0.5 * a])
    mix = refs.sum(0)
    psm = ideal_ratio_mask(mix, refs, n_fft=1024, hop=256, mask="psm")
    np.testing.assert_allclose(psm[0], mix, atol=1e-4)
    np.testing.assert_allclose(psm[1], 0.0, atol=1e-4)
    irm = ideal_ratio_mask(mix, refs, n_fft=1024, hop=256)
    np.testing.assert_allclose(irm, [0.8 * mix, 0.2 * mix], atol=1e-4)
    with pytest.raises(ValueError, match="unknown oracle mask 'cirm'"):
        ideal_ratio_mask(mix, refs, mask="cirm")


def test_phase_sensitive_oracle_beats_the_ratio_masks_on_noise() -> None:
    """Three independent noises: in every bin they partly cancel, which a ratio mask cannot
    model; the phase-sensitive mask's estimates are closer to every source than IRM1's and IRM2's."""
    rng = np.random.default_rng(9)
    refs = rng.standard_normal((3, 2, 24000)).astype(np.float32) * np.array([1.0, 0.5, 0.25])[:, None, None]
    mix = refs.sum(0)

    def err_db(est: np.ndarray) -> np.ndarray:
        return 10 * np.log10(np.sum((est - refs) ** 2, axis=(1, 2)) / np.sum(refs**2, axis=(1, 2)))

    psm = err_db(ideal_ratio_mask(mix, refs, n_fft=512, hop=128, mask="psm"))
    for power in (1.0, 2.0):
        irm = err_db(ideal_ratio_mask(mix, refs, n_fft=512, hop=128, power=power))
        assert (psm < irm - 0.5).all(), (power, psm, irm)


def test_oracle_refuses_a_hop_whose_windows_do_not_overlap() -> None:
    """Hann windows 1023 apart on n_fft 1024 barely overlap: the inverse would put the stems far
    off the mixture (0.5 on unit noise), so the hop is refused; 1000 still inverts exactly."""
    rng = np.random.default_rng(4)
    refs = rng.standard_normal((2, 1, 8000)).astype(np.float32)
    mix = refs.sum(0)
    np.testing.assert_allclose(ideal_ratio_mask(mix, refs, n_fft=1024, hop=1000).sum(0), mix, atol=1e-4)
    for hop in (1023, 1024):
        with pytest.raises(ValueError, match=f"oracle hop {hop} leaves Hann windows of 1024 samples too little"):
            ideal_ratio_mask(mix, refs, n_fft=1024, hop=hop)


def test_oracle_separator_through_the_engine() -> None:
    """The oracle behind the Separator interface, run by the real engine, separates tones apart in frequency."""
    from stemcli import api

    rng = np.random.default_rng(4)
    stems = two_stems(rng, seconds=2.0)
    refs = np.stack(list(stems.values()))
    sep = OracleSeparator(refs, list(stems), SR, n_fft=2048, hop=512)
    out = api.separate(refs.sum(0), SR, model=sep)
    for i, name in enumerate(stems):
        err = out[name] - refs[i]
        snr = 10 * np.log10(np.sum(refs[i] ** 2) / np.sum(err**2))
        assert snr > 25, (name, snr)


def test_factored_bss_eval_equals_plain_museval() -> None:
    from stemcli.evaluate import bss_eval

    rng = np.random.default_rng(5)
    refs = two_stems(rng, seconds=2.0)
    ests = {k: v + 0.3 * refs["vocals"] + 0.02 * rng.standard_normal(v.shape) for k, v in refs.items()}
    fast, plain = bss_eval(refs, ests, SR, fast=True), bss_eval(refs, ests, SR, fast=False)
    for stem in refs:
        for metric, values in plain[stem].items():
            np.testing.assert_allclose(fast[stem][metric], values, rtol=1e-7, atol=1e-7)
        assert np.isfinite(plain[stem]["SIR"]).all() and plain[stem]["SIR"].min() > 0


def test_cli_evaluate_scores_an_estimates_folder(two: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from stemcli.cli import cli

    rng = np.random.default_rng(7)
    est = write_estimates(two, tmp_path / "est", lambda s: {
        "vocals": 1.3 * s["vocals"],  # a gain error: BSS Eval images SDR = 20 log10(1 / 0.3)
        "accompaniment": s["accompaniment"] + 1e-4 * rng.standard_normal(s["accompaniment"].shape),
    })
    out = tmp_path / "cli.json"
    result = CliRunner().invoke(cli, ["evaluate", "--data", str(two), "--estimates", str(est), "--json", str(out), "-q"])
    assert result.exit_code == 0, result.output
    assert "accompaniment" in result.output and "SDR" in result.output
    saved = json.loads(out.read_text())
    assert saved["stems"] == ["vocals", "accompaniment"] and saved["model"].startswith("estimates:")
    assert saved["per_stem"]["vocals"]["SDR"] == pytest.approx(20 * np.log10(1 / 0.3), abs=0.05)
    assert saved["per_stem"]["accompaniment"]["SDR"] > 40
    bad = CliRunner().invoke(cli, ["evaluate", "--data", str(tmp_path / "est"), "--estimates", str(est)])
    assert bad.exit_code != 0 and "no track found" in bad.output


def test_cli_evaluate_oracle_at_a_chosen_stft(four: Path, tmp_path: Path) -> None:
    """``-m oracle --n-fft N --hop H`` scores the oracle at that STFT (recorded in the JSON);
    the STFT options without the oracle, or a hop beyond the window, are refused."""
    from click.testing import CliRunner

    from stemcli.cli import cli

    out = tmp_path / "o.json"
    result = CliRunner().invoke(cli, ["evaluate", "-m", "oracle", "--data", str(four), "--tracks", "1",
                                      "--n-fft", "1024", "--hop", "256", "--json", str(out), "-q"])
    assert result.exit_code == 0, result.output
    saved = json.loads(out.read_text())
    assert saved["settings"]["oracle"] == {"n_fft": 1024, "hop": 256, "power": 2.0}
    default = evaluate("oracle", four, progress=False, tracks=1, echo=lambda _: None)
    assert saved["per_stem"]["bass"]["SDR"] != pytest.approx(default["per_stem"]["bass"]["SDR"], abs=1e-6)
    alone = CliRunner().invoke(cli, ["evaluate", "--data", str(four), "--n-fft", "1024"])
    assert alone.exit_code != 0 and "add --oracle" in alone.output
    bad = CliRunner().invoke(cli, ["evaluate", "-m", "oracle", "--data", str(four), "--n-fft", "512", "--hop", "1024"])
    assert bad.exit_code != 0 and "hop must be in [1, n_fft], got 1024" in bad.output


def test_cli_evaluate_phase_sensitive_oracle(two: Path, tmp_path: Path) -> None:
    """``--oracle-mask psm`` scores the clipped phase-sensitive oracle (named in the table and the
    JSON), at least as high as the ratio-mask oracle; without the oracle it is refused."""
    from click.testing import CliRunner

    from stemcli.cli import cli

    out = tmp_path / "psm.json"
    result = CliRunner().invoke(cli, ["evaluate", "-m", "oracle", "--oracle-mask", "psm", "--data", str(two),
                                      "--tracks", "1", "--n-fft", "2048", "--hop", "512", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "oracle: clipped phase-sensitive mask, STFT 2048/512" in result.output
    saved = json.loads(out.read_text())
    assert saved["settings"]["oracle"] == {"n_fft": 2048, "hop": 512, "mask": "psm"}
    irm = evaluate("oracle", two, progress=False, tracks=1, n_fft=2048, hop=512, echo=lambda _: None)
    for stem in ("vocals", "accompaniment"):
        assert saved["per_stem"][stem]["SDR"] > irm["per_stem"][stem]["SDR"], stem
    alone = CliRunner().invoke(cli, ["evaluate", "--data", str(two), "--estimates", str(two / "test"),
                                     "--oracle-mask", "psm"])
    assert alone.exit_code != 0 and "the oracle mask applies to the oracle: add --oracle" in alone.output
    explicit = CliRunner().invoke(cli, ["evaluate", "--data", str(two), "--estimates", str(two / "test"),
                                        "--oracle-mask", "irm"])
    assert explicit.exit_code != 0 and "add --oracle" in explicit.output
    with pytest.raises(EvaluationError, match="power=1.0 applies to the ratio mask"):
        evaluate("oracle", two, progress=False, oracle_mask="psm", power=1.0, echo=lambda _: None)


def test_phase_sensitive_oracle_separator() -> None:
    """``OracleSeparator(mask="psm")`` through the engine: the cancelling pair of
    :func:`test_phase_sensitive_oracle_on_sources_that_cancel` comes out as (mixture, silence)."""
    from stemcli import api

    a = np.random.default_rng(14).standard_normal((2, SR)).astype(np.float32)
    refs = np.stack([a, -0.5 * a])
    out = api.separate(refs.sum(0), SR, model=OracleSeparator(refs, ["vocals", "accompaniment"], SR, mask="psm"))
    np.testing.assert_allclose(out["vocals"], 0.5 * a, atol=1e-4)
    np.testing.assert_allclose(out["accompaniment"], 0.0, atol=1e-4)
    with pytest.raises(ValueError, match="unknown oracle mask 'ibm'"):
        OracleSeparator(refs, ["vocals", "accompaniment"], SR, mask="ibm")


def _quality_script() -> ModuleType:
    return load_script("benchmarks/quality.py")


def test_results_record_the_mixture_fingerprint(two: Path, tmp_path: Path) -> None:
    from stemcli.evaluate import audio_fingerprint

    res = evaluate(None, two, estimates=write_estimates(two, tmp_path / "e", lambda s: s), progress=False,
                   echo=lambda _: None)
    for info in res["tracks"]:
        mix = sf.read(two / "test" / info["name"] / "mixture.wav", dtype="float32")[0].T
        assert info["mixture_sha256"] == audio_fingerprint(mix)
    assert audio_fingerprint(np.zeros((2, 4), np.float32)) != audio_fingerprint(np.zeros((2, 5), np.float32))


def test_quality_benchmark_reuses_baseline_scores_only_on_the_same_tracks(two: Path, tmp_path: Path) -> None:
    """benchmarks/quality.py --baseline-results: the saved per-track scores, medians taken again
    over this run's tracks; refused for other audio, missing tracks or another --wiener."""
    from stemcli.evaluate import write_json

    q = _quality_script()
    quiet = dict(progress=False, echo=lambda _: None)
    leaky = evaluate(None, two, estimates=write_estimates(two, tmp_path / "a", lambda s: {
        "vocals": s["vocals"] + 0.2 * s["accompaniment"], "accompaniment": s["accompaniment"]}), **quiet)
    first, second = (t["name"] for t in leaky["tracks"])
    frames = leaky["per_track"][first]["vocals"]["frames"]["SDR"]
    frames[0], frames[1] = float("nan"), float("inf")  # written as null and "inf", read back as such
    leaky["per_track"][first]["accompaniment"]["SIR"] = float("nan")  # a silent frame set: ignored by the median
    leaky["per_stem"] = aggregate(leaky["per_track"])
    assert leaky["per_stem"]["accompaniment"]["SIR"] == leaky["per_track"][second]["accompaniment"]["SIR"]
    saved = write_json({"command": "quality.py --baseline RUN", "table": {}, "baseline": leaky}, tmp_path / "q.json")
    notes: list[str] = []

    base = q.load_baseline(saved, 0)
    back = q.reuse_baseline(base, leaky["tracks"], note=notes.append)
    assert back["per_stem"] == leaky["per_stem"] and not notes
    assert back["reused_from"] == {"file": str(saved), "command": "quality.py --baseline RUN"}
    one = q.reuse_baseline(base, leaky["tracks"][1:])  # a subset: medians over that track alone
    assert list(one["per_track"]) == [second]
    assert one["per_stem"]["vocals"]["SDR"] == pytest.approx(leaky["per_track"][second]["vocals"]["SDR"])
    plain = write_json(leaky, tmp_path / "eval.json")  # a `stemcli evaluate --json` file works too
    assert q.reuse_baseline(q.load_baseline(plain, 0), leaky["tracks"])["per_stem"] == leaky["per_stem"]

    for key, value, match in (("mixture_sha256", "0" * 64, "mixture_sha256.*other audio"),
                              ("seconds", 4.0, "seconds"), ("sample_rate", 48000, "sample_rate"),
                              ("channels", 1, "channels")):
        with pytest.raises(ValueError, match=match):
            q.reuse_baseline(base, [dict(t, **{key: value}) for t in leaky["tracks"]])
    with pytest.raises(ValueError, match="no baseline scores for track.*nosuch"):
        q.reuse_baseline(base, [*leaky["tracks"], {"name": "nosuch"}])
    no_info = dict(base, tracks=base["tracks"][:1])  # scores without the track's length: not checked, refused
    with pytest.raises(ValueError, match=f"no baseline scores for track.*{second}"):
        q.reuse_baseline(no_info, leaky["tracks"])
    old = dict(base, tracks=[{k: v for k, v in t.items() if k != "mixture_sha256"} for t in base["tracks"]])
    assert q.reuse_baseline(old, leaky["tracks"], note=notes.append)["per_stem"] == leaky["per_stem"]
    assert notes and "no mixture sha256 for 2 of 2" in notes[0]
    with pytest.raises(ValueError, match="malformed scores for track"):
        q.reuse_baseline(dict(base, per_track={**base["per_track"], first: {"vocals": {"SDR": 1.0}}}), leaky["tracks"])

    with pytest.raises(ValueError, match="--wiener 0, this run uses --wiener 1"):
        q.load_baseline(saved, 1)
    filtered = dict(leaky, settings={**leaky["settings"], "wiener": 1})
    assert q.load_baseline(write_json(filtered, tmp_path / "w.json"), 1)["settings"]["wiener"] == 1
    unrecorded = {k: v for k, v in leaky["settings"].items() if k != "wiener"}  # files before the key: the command
    older = write_json({"command": "quality.py --wiener 1 --baseline RUN", "table": {},
                        "baseline": dict(leaky, settings=unrecorded)}, tmp_path / "old.json")
    assert q.load_baseline(older, 1)["reused_from"]["command"].startswith("quality.py --wiener 1")
    with pytest.raises(ValueError, match="--wiener 1, this run uses --wiener 0"):
        q.load_baseline(older, 0)
    (tmp_path / "junk.json").write_text("{")
    with pytest.raises(ValueError, match="junk.json: cannot read"):
        q.load_baseline(tmp_path / "junk.json", 0)
    with pytest.raises(ValueError, match="no baseline results"):
        q.load_baseline(write_json({"table": {}, "baseline": None}, tmp_path / "none.json"), 0)
    with pytest.raises(SystemExit):
        q.main(["--baseline", "umx", "--baseline-results", str(saved)])
    assert q.main(["--baseline-results", str(tmp_path / "junk.json"), "--data", str(two)]) == 2  # before any model runs


def test_the_wiener_setting_is_recorded_with_the_scores(two: Path) -> None:
    """What --baseline-results compares: every model run records its post-filter iterations."""
    quiet = dict(progress=False, echo=lambda _: None, tracks=["track1"])
    assert evaluate(SplitAt1k(), two, **quiet)["settings"]["wiener"] == 0
    assert evaluate(SplitAt1k(), two, wiener=1, **quiet)["settings"]["wiener"] == 1


class CardSplit(SplitAt1k):
    """SplitAt1k posing as a card-backed model (what OnnxSeparator carries)."""

    name = "mmdense"
    card = {"_path": "/models/a/mmdense.json", "name": "mmdense",
            "files": {"onnx": {"path": "mmdense.onnx", "sha256": "ab" * 32},
                      "post": {"path": "mmdense.post.onnx", "sha256": "cd" * 32},
                      "torch": {"path": "mmdense.pt", "sha256": "ef" * 32}}}


def test_results_name_the_scored_card_and_its_files(two: Path, tmp_path: Path) -> None:
    """Two exports under one name are told apart by their results: card path, backend and the
    sha256 of the files that backend loads, also through the Wiener post-filter; a separator
    without a card records none."""
    quiet = dict(progress=False, echo=lambda _: None, tracks=["track1"])
    want = {"path": "/models/a/mmdense.json", "name": "mmdense", "backend": "onnx",
            "files": {"onnx": "ab" * 32, "post": "cd" * 32}}
    res = evaluate(CardSplit(), two, json_out=tmp_path / "r.json", **quiet)
    assert res["card"] == want
    assert json.loads((tmp_path / "r.json").read_text())["card"] == want
    assert evaluate(CardSplit(), two, wiener=1, **quiet)["card"] == want
    assert "card" not in evaluate(SplitAt1k(), two, **quiet)
    on_torch = CardSplit()
    on_torch.backend = "torch"  # the torch backend loads only the state dict
    assert evaluate(on_torch, two, **quiet)["card"]["files"] == {"torch": "ef" * 32}
    bare = CardSplit()
    bare.card = {"name": "x", "files": {"onnx": {"sha256": "12" * 32}, "post": "not an entry"}}  # no _path
    assert evaluate(bare, two, **quiet)["card"] == {"path": None, "name": "x", "backend": "onnx",
                                                    "files": {"onnx": "12" * 32}}


def test_quality_benchmark_prints_and_saves_the_paired_comparison(two: Path, tmp_path: Path, monkeypatch,
                                                                  capsys) -> None:
    """benchmarks/quality.py puts stemcli.compare's rows beside the target table (printed, and as
    ``paired`` in --json), computed from the default model's and the baseline's per-track scores."""
    import stemcli.evaluate as ev
    from stemcli.compare import compare
    from stemcli.evaluate import write_json

    q = _quality_script()
    quiet = dict(progress=False, echo=lambda _: None)
    leak = lambda k: lambda s: {"vocals": s["vocals"] + k * s["accompaniment"],  # noqa: E731
                                "accompaniment": s["accompaniment"] + k * s["vocals"]}
    good = evaluate(None, two, estimates=write_estimates(two, tmp_path / "good", leak(0.02)), oracle=True, **quiet)
    base = evaluate(None, two, estimates=write_estimates(two, tmp_path / "base", leak(0.3)), **quiet)
    saved = write_json(base, tmp_path / "base.json")
    monkeypatch.setattr(ev, "evaluate", lambda *a, **k: good)  # the default model's run
    out = tmp_path / "q.json"
    code = q.main(["--data", str(two), "--baseline-results", str(saved), "--json", str(out)])
    printed = capsys.readouterr().out
    assert code == 0  # 0.02 against 0.3 leakage: far more than +1 dB on both stems
    assert "track by track (stemcli compare)" in printed and "2/2" in printed
    doc = json.loads(out.read_text())
    want = compare(good, q.reuse_baseline(q.load_baseline(saved, 0), good["tracks"]), target=q.TARGET_DELTA)
    assert doc["paired"]["vocals"]["delta"] == pytest.approx(want["vocals"]["delta"])
    assert doc["paired"]["vocals"]["delta"] == pytest.approx(doc["table"]["vocals"]["delta"])
    assert doc["paired"]["accompaniment"]["won"] == 2 and doc["paired"]["accompaniment"]["share_at_target"] == 1.0


class _SplitAt1k(Separator):
    """'vocals' = the mixture above 1 kHz plus ``leak`` times the part below, 'accompaniment' the rest."""

    sources = ("vocals", "accompaniment")
    segment = 10.0

    def __init__(self, leak: float) -> None:
        self.leak = leak

    def separate(self, mix: np.ndarray) -> np.ndarray:
        spec = np.fft.rfft(mix, axis=-1)
        low = np.fft.irfft(spec * (np.fft.rfftfreq(mix.shape[-1], 1 / SR) < 1000), n=mix.shape[-1], axis=-1)
        vocals = (mix - low) + self.leak * low
        return np.stack([vocals, mix - vocals], axis=1).astype(np.float32)


def test_band_errors_put_a_leak_in_its_band(two: Path, tmp_path: Path) -> None:
    """benchmarks/band_errors.py: twice the leak of the accompaniment into the vocals is +6.02 dB of
    vocals error in the accompaniment's bands (50-500 Hz) and no change where the leak is not."""
    b = load_script("benchmarks/band_errors.py")
    tone = np.sin(2 * np.pi * 60 * np.arange(SR) / SR)[None].repeat(2, 0)
    e = b.band_energy(tone, SR)
    assert e[0] / e.sum() > 0.99  # a 60 Hz tone: all in 0-100 Hz
    res = b.band_errors({"a": _SplitAt1k(0.1), "b": _SplitAt1k(0.2)}, two, "test", None)
    va, vb = np.asarray(res["error"]["a"]["vocals"]), np.asarray(res["error"]["b"]["vocals"])
    bands = [tuple(x) for x in res["bands"]]
    for k in (bands.index((100, 250)), bands.index((250, 500))):
        assert 10 * np.log10(vb[k] / va[k]) == pytest.approx(20 * np.log10(2), abs=0.1)
    k = bands.index((2000, 4000))
    assert abs(10 * np.log10(vb[k] / va[k])) < 0.05
    text = b.report(res)
    assert "vocals: total error against a: b +" in text and "100-250" in text
    with pytest.raises(SystemExit):
        b.main(["a=mmdense", "--data", str(two)])  # one model: nothing to compare with
    other = _SplitAt1k(0.1)
    other.sources = ("voice", "accompaniment")
    with pytest.raises(ValueError, match="b: the model gives no 'vocals' stem"):
        b.band_errors({"a": _SplitAt1k(0.1), "b": other}, two, "test", 1)


def test_band_errors_exchange_terms_are_signed_and_named() -> None:
    """Three errors a, -2a + c and a - c (a, c noises in separate bands, summing to zero): stem x's
    error ||a||^2 is +200% traded with stem y and -100% with stem z, z's is split between the two,
    and the report prints those shares."""
    b = load_script("benchmarks/band_errors.py")
    rng = np.random.default_rng(3)
    a, c = 0.1 * band_noise(rng, SR, 100, 500), 0.1 * band_noise(rng, SR, 2000, 4000)
    terms = b.exchange_terms(["x", "y", "z"], b.band_cross([a, -2 * a + c, a - c], SR))
    ea, ec = b.band_energy(a, SR).sum(), b.band_energy(c, SR).sum()
    assert float(np.sum(terms["x"]["y"])) == pytest.approx(2 * ea, rel=0.02)
    assert float(np.sum(terms["x"]["z"])) == pytest.approx(-ea, rel=0.02)
    assert float(np.sum(terms["z"]["x"])) == pytest.approx(-ea, rel=0.02)  # <e_z, e_x> = ||a||^2
    assert float(np.sum(terms["z"]["y"])) == pytest.approx(2 * ea + ec, rel=0.02)
    assert abs(float(np.sum(terms["y"]["rest"]))) < 1e-6 * (ea + ec)
    res = {"bands": [[0, 22050]], "reference": {"x": [4 * ea]},
           "error": {"m": {"x": [float(np.sum(b.band_energy(a, SR)))]}},
           "exchange": {"m": {"x": {k: [float(np.sum(v))] for k, v in terms["x"].items()}}}}
    text = b.report_exchange(res)
    assert "m x: error -6.02 dB" in text
    assert "200.0%" in text and "-100.0%" in text
    with pytest.raises(ValueError, match="no stems"):
        b.exchange_terms([], np.zeros((0, 0, len(b.EDGES) - 1)))


class _Scaled(_SplitAt1k):
    """:class:`_SplitAt1k` with every stem times ``gain``: the stems no longer sum to the mixture."""

    def __init__(self, leak: float, gain: float) -> None:
        super().__init__(leak)
        self.gain = gain

    def separate(self, mix: np.ndarray) -> np.ndarray:
        return self.gain * super().separate(mix)


def test_band_errors_exchange_names_the_stem_an_error_is_traded_with(two: Path, tmp_path: Path, capsys,
                                                                     monkeypatch) -> None:
    """--exchange: the vocals that take 10 % of the accompaniment trade all their error with the
    accompaniment, in its bands (50-500 Hz); stems that do not sum to the mixture leave their
    error as ``rest``; one model is enough, and the JSON holds the table."""
    b = load_script("benchmarks/band_errors.py")
    res = b.band_errors({"leak": _SplitAt1k(0.1), "half": _Scaled(0.0, 0.5)}, two, "test", None, exchange=True)
    bands = [tuple(x) for x in res["bands"]]
    low = [bands.index(x) for x in ((0, 100), (100, 250), (250, 500))]
    for s, x in (("vocals", "accompaniment"), ("accompaniment", "vocals")):
        traded = np.asarray(res["exchange"]["leak"][s][x])
        err = np.asarray(res["error"]["leak"][s])
        np.testing.assert_allclose(traded, err, rtol=1e-4, atol=1e-6 * err.sum())  # all of it, band by band
        assert traded[low].sum() > 0.97 * err.sum()  # where the accompaniment is (50-500 Hz noise)
        assert abs(np.sum(res["exchange"]["leak"][s]["rest"])) < 1e-4 * err.sum()
    # half of each stem: the errors (-v / 2, -a / 2) live in different bands, so nothing is traded
    rest = np.asarray(res["exchange"]["half"]["vocals"]["rest"])
    assert rest.sum() == pytest.approx(float(np.sum(res["error"]["half"]["vocals"])), rel=0.01)
    assert abs(np.sum(res["exchange"]["half"]["vocals"]["accompaniment"])) < 0.01 * rest.sum()
    with pytest.raises(ValueError, match="none of the stems drums"):
        b.band_errors({"leak": _SplitAt1k(0.1)}, two, "test", 1, ["drums"], exchange=True)
    import stemcli.api as api

    real = api.separate
    monkeypatch.setattr(api, "separate", lambda mix, rate, model=None: real(mix, rate, model=_SplitAt1k(0.1)))
    out = tmp_path / "x.json"
    assert b.main(["leak=any", "--data", str(two), "--tracks", "1", "--exchange", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "leak vocals: error" in printed and "traded with" in printed
    doc = json.loads(out.read_text())
    assert set(doc["exchange"]["leak"]["vocals"]) == {"accompaniment", "rest"}
