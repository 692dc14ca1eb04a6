"""stemcli.compare and `stemcli compare`: paired statistics of two evaluation results, checked on
hand-made scores whose medians, differences and bootstrap distribution are known."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from stemcli import compare as cmp
from stemcli.cli import cli
from stemcli.evaluate import write_json


def result(scores: dict[str, list[float]], model: str = "m", sha: dict[str, str] | None = None) -> dict:
    """An evaluate()-shaped result: stem -> one SDR per track (tracks t0, t1, ...)."""
    n = len(next(iter(scores.values())))
    names = [f"t{i}" for i in range(n)]
    per_track = {t: {s: {"SDR": v[i], "SIR": 0.0, "SAR": 0.0, "ISR": 0.0} for s, v in scores.items()}
                 for i, t in enumerate(names)}
    tracks = [{"name": t, **({"mixture_sha256": sha[t]} if sha and t in sha else {})} for t in names]
    return {"model": model, "stems": list(scores), "tracks": tracks, "per_track": per_track}


def test_medians_differences_and_wins_on_known_scores() -> None:
    a = result({"drums": [1.0, 2.0, 3.0, 4.0, 5.0], "bass": [-80.0, 5.0, 6.0, 7.0, 8.0]})
    b = result({"drums": [0.0, 0.0, 0.0, 0.0, 10.0], "bass": [-90.0, 5.5, 5.5, 6.5, 7.5]})
    rows = cmp.compare(a, b, resamples=0)
    d = rows["drums"]
    assert (d["a"], d["b"], d["delta"]) == (3.0, 0.0, 3.0)
    assert d["mean_diff"] == pytest.approx(1.0) and d["median_diff"] == 2.0 and d["won"] == 4 and d["tracks"] == 5
    assert np.isnan(d["interval"][0]) and d["share_at_target"] is None  # no resamples asked for
    bass = rows["bass"]  # a near-silent stem (-80 / -90 dB) moves the mean, not the median of the differences
    assert bass["mean_diff"] == pytest.approx((10 - 0.5 + 0.5 + 0.5 + 0.5) / 5)
    assert bass["median_diff"] == 0.5 and bass["delta"] == pytest.approx(0.5)


def test_bootstrap_resamples_tracks_in_pairs() -> None:
    """Two tracks: a resample holds track 0 twice, both, or track 1 twice (1/4, 1/2, 1/4), and the
    median of two values is their mean, so delta is 0, 2 or 4 with those chances."""
    a, b = result({"vocals": [0.0, 4.0]}), result({"vocals": [0.0, 0.0]})
    row = cmp.compare(a, b, target=3.0, resamples=20000, seed=3)["vocals"]
    assert row["share_at_target"] == pytest.approx(0.25, abs=0.015)
    assert cmp.compare(a, b, target=1.0, resamples=20000)["vocals"]["share_at_target"] == pytest.approx(0.75, abs=0.015)
    assert row["interval"] == [0.0, 4.0]
    same = cmp.compare(a, result({"vocals": [0.0, 4.0]}), target=0.5, resamples=2000)["vocals"]
    assert same["interval"] == [0.0, 0.0] and same["share_at_target"] == 0.0  # unpaired draws would differ
    again = cmp.compare(a, b, target=3.0, resamples=20000, seed=3)["vocals"]
    assert again == row  # a fixed seed: the same interval every run


def test_constant_lead_gives_a_degenerate_interval() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(5, 3, 16).tolist()
    rows = cmp.compare(result({"other": [v + 2.0 for v in base]}), result({"other": base}), target=1.0)
    r = rows["other"]
    assert r["delta"] == pytest.approx(2.0) and r["won"] == 16
    assert r["interval"] == pytest.approx([2.0, 2.0]) and r["share_at_target"] == 1.0


def test_nan_tracks_are_left_out_and_one_sided_stems_dropped() -> None:
    a = result({"vocals": [float("nan"), 2.0, 3.0], "drums": [1.0, 1.0, 1.0]})
    b = result({"vocals": [9.0, 1.0, 1.0]})
    rows = cmp.compare(a, b, resamples=100)
    assert list(rows) == ["vocals"] and rows["vocals"]["tracks"] == 2 and rows["vocals"]["delta"] == 1.5


def test_perfect_scores_on_both_sides_are_a_tie() -> None:
    """+inf (a perfect estimate) on both sides differs by 0, not NaN, in every statistic."""
    inf = float("inf")
    a, b = result({"vocals": [inf, inf, 1.0, 2.0, 3.0]}), result({"vocals": [inf, inf, 0.0, 0.0, 0.0]})
    row = cmp.compare(a, b, target=0.5, resamples=4000)["vocals"]
    assert row["delta"] == 3.0 and row["mean_diff"] == pytest.approx(6.0 / 5) and row["median_diff"] == 1.0
    assert row["won"] == 3 and not np.isnan(row["interval"]).any() and 0.0 < row["share_at_target"] < 1.0
    minus = cmp.compare(result({"bass": [-inf, 2.0]}), result({"bass": [1.0, 1.0]}), resamples=0)["bass"]
    assert minus["mean_diff"] == -inf and minus["won"] == 1


def test_refuses_other_tracks_other_audio_and_bad_arguments() -> None:
    a = result({"vocals": [1.0, 2.0, 3.0]}, sha={"t0": "aa", "t1": "bb"})
    with pytest.raises(ValueError, match=r"not on the same tracks \(only in A: t2\)"):
        cmp.compare(a, result({"vocals": [1.0, 2.0]}))
    with pytest.raises(ValueError, match=r"not on the same tracks \(only in B: t3\)"):
        cmp.compare(a, result({"vocals": [1.0, 2.0, 3.0, 4.0]}))
    with pytest.raises(ValueError, match=r"only in mine \(a.json\): t2; only in B: t3"):
        cmp.compare({**a, "label": "mine (a.json)", "per_track": {**a["per_track"]}},
                    {**a, "per_track": {k: v for k, v in result({"vocals": [0.0] * 4})["per_track"].items() if k != "t2"}})
    with pytest.raises(ValueError, match="target must be a finite number"):
        cmp.compare(a, a, target=float("nan"))
    broken = result({"vocals": [1.0, 2.0, 3.0]})
    broken["per_track"]["t1"]["vocals"] = {"SIR": 1.0}
    with pytest.raises(ValueError, match="B: track t1, stem vocals: no SDR score"):
        cmp.compare(a, broken)
    broken["per_track"]["t1"]["vocals"] = {"SDR": "loud"}
    with pytest.raises(ValueError, match="B: track t1, stem vocals: not a score: 'loud'"):
        cmp.compare(a, broken)
    with pytest.raises(ValueError, match="track t1 was scored on different audio"):
        cmp.compare(a, result({"vocals": [1.0, 2.0, 3.0]}, sha={"t0": "aa", "t1": "cc"}))
    assert cmp.compare(a, result({"vocals": [1.0, 2.0, 3.0]}, sha={"t0": "aa"}), resamples=0)  # unrecorded: not compared
    with pytest.raises(ValueError, match="unknown metric"):
        cmp.compare(a, a, metric="PES")
    with pytest.raises(ValueError, match="resamples must be >= 0"):
        cmp.compare(a, a, resamples=-1)


def test_load_result_reads_evaluate_and_quality_files(tmp_path: Path) -> None:
    a = result({"bass": [1.0, float("inf")]}, model="mine")
    b = result({"bass": [0.5, None]}, model="theirs")  # null in a written file: NaN
    ev = write_json(a, tmp_path / "eval.json")
    q = write_json({"command": "quality.py", "table": {}, "default": a, "baseline": b}, tmp_path / "quality.json")
    assert cmp.load_result(ev)["label"] == "mine (eval.json)"
    assert cmp.load_result(ev)["per_track"]["t1"]["bass"]["SDR"] == "inf"
    assert cmp.load_result(q)["model"] == "mine"
    base = cmp.load_result(f"{q}:baseline")
    assert base["model"] == "theirs" and base["label"] == "theirs (quality.json:baseline)"
    rows = cmp.compare(cmp.load_result(q), base, resamples=0)
    assert rows["bass"]["tracks"] == 1 and rows["bass"]["delta"] == 0.5
    assert cmp.load_result(f"{q}:default")["label"] == "mine (quality.json:default)"
    assert cmp.load_result(q)["label"] == "mine (quality.json:default)"  # the default entry, named as such
    with pytest.raises(ValueError, match="eval.json: ':baseline' names an entry of a benchmarks/quality.py file"):
        cmp.load_result(f"{ev}:baseline")
    with pytest.raises(ValueError, match=r"quality.json: unknown entry ':oracle' \(choose :default or :baseline\)"):
        cmp.load_result(f"{q}:oracle")
    (tmp_path / "odd.json").write_text(json.dumps({"per_track": {"t0": None}}))
    with pytest.raises(ValueError, match="odd.json: malformed scores for track t0"):
        cmp.load_result(tmp_path / "odd.json")
    (tmp_path / "junk.json").write_text("{")
    with pytest.raises(ValueError, match="junk.json: cannot read evaluation results"):
        cmp.load_result(tmp_path / "junk.json")
    (tmp_path / "empty.json").write_text(json.dumps({"per_track": {}}))
    with pytest.raises(ValueError, match="empty.json: no per-track scores"):
        cmp.load_result(tmp_path / "empty.json")
    only = write_json({"table": {}, "default": a, "baseline": None}, tmp_path / "nobase.json")
    with pytest.raises(ValueError, match="nobase.json: this benchmarks/quality.py file has no 'baseline' results"):
        cmp.load_result(f"{only}:baseline")


def test_cli_prints_the_table_and_writes_json(tmp_path: Path) -> None:
    a = write_json(result({"vocals": [3.0, 5.0, 7.0], "drums": [1.0, 2.0, 3.0]}, model="A"), tmp_path / "a.json")
    b = write_json(result({"vocals": [1.0, 2.0, 3.0], "drums": [2.0, 2.0, 2.0]}, model="B"), tmp_path / "b.json")
    res = CliRunner().invoke(cli, ["compare", str(a), str(b), "--target", "1", "--json", str(tmp_path / "c.json")])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    vocals = next(x for x in lines if x.startswith("vocals")).split()
    assert vocals[1:4] == ["5.00", "2.00", "+3.00"] and vocals[-2] == "3/3"
    drums = next(x for x in lines if x.startswith("drums")).split()
    assert drums[3] == "+0.00" and drums[-2] == "1/3"
    saved = json.loads((tmp_path / "c.json").read_text())
    assert saved["per_stem"]["vocals"]["delta"] == 3.0 and saved["target"] == 1.0
    bad = CliRunner().invoke(cli, ["compare", str(a), str(tmp_path / "nope.json")])
    assert bad.exit_code == 1 and "nope.json: cannot read evaluation results" in bad.output
    assert len(bad.output.strip().splitlines()) == 1


def test_results_of_two_exports_under_one_name_are_told_apart(tmp_path: Path) -> None:
    """Every export of a run is called ``mmdense``: the label carries the sha256 of the file the
    backend scored, and comparing two results of the same files on the same backend says so
    (on stderr, the table stays clean)."""
    def card(backend: str, **files: str) -> dict:
        return {"path": "/r/mmdense.json", "name": "mmdense", "backend": backend, "files": files}

    def saved(name: str, c: dict | None) -> Path:
        res = result({"bass": [1.0, 2.0]}, model="mmdense")
        return write_json({**res, **({"card": c} if c is not None else {})}, tmp_path / name)

    a = saved("a.json", card("onnx", onnx="ab" * 32, post="99" * 32))
    b = saved("b.json", card("onnx", onnx="cd" * 32))
    c = saved("c.json", card("onnx", onnx="ab" * 32, post="99" * 32))
    t = saved("t.json", card("torch", torch="ef" * 32))
    odd = saved("odd.json", {"files": {"onnx": {"sha256": "ab" * 32}}})  # not a sha256 string: ignored
    old = saved("old.json", None)
    load = cmp.load_result
    assert load(a)["label"] == f"mmdense (a.json, onnx {'ab' * 6})"
    assert load(t)["label"] == f"mmdense (t.json, torch {'ef' * 6})"
    assert load(old)["label"] == "mmdense (old.json)" and load(odd)["label"] == "mmdense (odd.json)"
    assert not cmp.same_model(load(a), load(b))
    assert cmp.same_model(load(a), load(c))
    assert not cmp.same_model(load(a), load(t))
    assert not cmp.same_model(load(old), load(old))  # nothing recorded: unknown, not equal
    assert not cmp.same_model(load(odd), load(odd))
    same_files_other_backend = saved("d.json", card("torch", onnx="ab" * 32, post="99" * 32))
    assert not cmp.same_model(load(a), load(same_files_other_backend))
    note = "A and B scored the same model files"
    runner = CliRunner()
    res = runner.invoke(cli, ["compare", str(a), str(c), "--resamples", "0"])
    assert res.exit_code == 0 and note in res.stderr and note not in res.stdout
    assert note not in runner.invoke(cli, ["compare", str(a), str(b), "--resamples", "0"]).output


def test_a_side_can_be_the_per_track_mean_of_several_results(tmp_path: Path) -> None:
    """``A1,A2`` is the per-track mean of the two results (the seeds of one recipe): the
    comparison of the means differs from either single result's, a NaN in one seed drops the
    track, ``inf`` stays ``inf``; results on other tracks, with other stems or one alone are
    refused, and the CLI takes the comma list on either side."""
    a1 = result({"bass": [1.0, 2.0, 3.0, 4.0], "drums": [5.0, 5.0, 5.0, float("inf")]}, model="a1")
    a2 = result({"bass": [3.0, 2.0, 1.0, None], "drums": [7.0, 7.0, 5.0, float("inf")]}, model="a2")
    b1 = result({"bass": [0.0, 0.0, 0.0, 0.0], "drums": [6.0, 6.0, 6.0, 6.0]}, model="b1")
    a1["per_track"]["t0"]["bass"]["frames"] = {"SDR": [0.5, 1.5]}  # evaluate's per-frame values: not averaged
    mean = cmp.mean_result([a1, a2])
    assert set(mean["per_track"]["t0"]["bass"]) == {"SDR", "SIR", "SAR", "ISR"}
    assert [mean["per_track"][t]["bass"]["SDR"] for t in ("t0", "t1", "t2")] == [2.0, 2.0, 2.0]
    assert np.isnan(mean["per_track"]["t3"]["bass"]["SDR"]) and mean["per_track"]["t3"]["drums"]["SDR"] == np.inf
    assert mean["label"] == "mean of 2: a1 + a2" and "card" not in mean
    rows = cmp.compare(mean, b1, resamples=0)
    assert rows["bass"]["tracks"] == 3 and rows["bass"]["median_diff"] == 2.0 and rows["bass"]["won"] == 3
    assert rows["drums"]["median_diff"] == 0.0 and rows["drums"]["won"] == 1  # means 6, 6, 5, inf against 6
    assert cmp.compare(a1, b1, resamples=0)["drums"]["median_diff"] == -1.0  # single seed: a loss
    files = [write_json(r, tmp_path / f"{r['model']}.json") for r in (a1, a2, b1)]
    side = cmp.load_side(f"{files[0]},{files[1]}")
    assert side["label"] == "mean of 2: a1 (a1.json) + a2 (a2.json)"
    assert side["per_track"]["t0"]["drums"]["SDR"] == 6.0
    with pytest.raises(ValueError, match="two or more results, got 1"):
        cmp.mean_result([a1])
    with pytest.raises(ValueError, match="not on the same tracks"):
        cmp.mean_result([a1, result({"bass": [1.0, 2.0, 3.0], "drums": [1.0, 1.0, 1.0]})])
    with pytest.raises(ValueError, match="track t0: the averaged results separated different stems"):
        cmp.mean_result([a1, result({"bass": [1.0, 2.0, 3.0, 4.0]})])
    with pytest.raises(ValueError, match="track t1, stem bass: the averaged results scored different metrics"):
        cmp.mean_result([a1, {**a2, "per_track": {**a2["per_track"], "t1": {
            "bass": {"SDR": 1.0}, "drums": a2["per_track"]["t1"]["drums"]}}}])
    with pytest.raises(ValueError, match="an empty file name in the list"):
        cmp.load_side(f"{files[0]},")
    res = CliRunner().invoke(cli, ["compare", f"{files[0]},{files[1]}", str(files[2]), "--resamples", "0",
                                   "--json", str(tmp_path / "c.json")])
    assert res.exit_code == 0, res.output
    bass = next(x for x in res.output.splitlines() if x.startswith("bass")).split()
    assert bass[1:4] == ["2.00", "0.00", "+2.00"] and bass[-1] == "3/3"
    assert json.loads((tmp_path / "c.json").read_text())["a"] == "mean of 2: a1 (a1.json) + a2 (a2.json)"
    bad = CliRunner().invoke(cli, ["compare", str(files[2]), f"{files[0]},{tmp_path / 'nope.json'}"])
    assert bad.exit_code == 1 and "nope.json: cannot read evaluation results" in bad.output
    assert len(bad.output.strip().splitlines()) == 1


def test_the_mean_of_three_is_a_mean_of_every_metric_on_the_same_audio(tmp_path: Path) -> None:
    """Three results (a mean, not a median: 0, 0, 3 -> 1; every metric averaged on its own),
    the mixtures' sha256 checked across all of them (and carried to the comparison with B),
    errors naming the result at fault, a file named twice refused, a file name with a comma read
    as one file."""
    sha = {"t0": "aa", "t1": "bb"}
    rs = []
    for k, (sdr, sir) in enumerate([([0.0, 1.0], [1.0, 2.0]), ([0.0, 2.0], [2.0, 4.0]), ([3.0, 6.0], [6.0, 0.0])]):
        r = result({"bass": sdr}, model=f"s{k}", sha=sha if k == 2 else None)  # only the third recorded the audio
        for i, t in enumerate(("t0", "t1")):
            r["per_track"][t]["bass"].update(SIR=sir[i], SAR=10.0 * k, ISR=-float(k))
        rs.append(r)
    mean = cmp.mean_result(rs)
    assert mean["per_track"]["t0"]["bass"] == {"SDR": 1.0, "SIR": 3.0, "SAR": 10.0, "ISR": -1.0}
    assert mean["per_track"]["t1"]["bass"] == {"SDR": 3.0, "SIR": 2.0, "SAR": 10.0, "ISR": -1.0}
    assert mean["tracks"] == [{"name": "t0", "mixture_sha256": "aa"}, {"name": "t1", "mixture_sha256": "bb"}]
    b = result({"bass": [0.0, 0.0]}, sha={"t0": "aa", "t1": "cc"})  # other audio on t1
    with pytest.raises(ValueError, match="track t1 was scored on different audio"):
        cmp.compare(mean, b, resamples=0)
    assert cmp.compare(mean, result({"bass": [0.0, 0.0]}), metric="SIR", resamples=0)["bass"]["a"] == 2.5
    odd = result({"bass": [0.0, 0.0]}, model="odd", sha={"t0": "aa", "t1": "dd"})
    with pytest.raises(ValueError, match=r"track t1 was scored on different audio in the averaged results \(mixture "
                                         r"sha256 of odd differs"):
        cmp.mean_result([*rs, odd])
    fewer = result({"bass": [0.0, 0.0]}, model="fewer")
    for t in ("t0", "t1"):
        del fewer["per_track"][t]["bass"]["ISR"]
    with pytest.raises(ValueError, match=r"track t0, stem bass: the averaged results scored different metrics "
                                         r"\(s0: ISR,SAR,SDR,SIR; fewer: SAR,SDR,SIR\)"):
        cmp.mean_result([rs[0], fewer])
    with pytest.raises(ValueError, match=r"track t0: the averaged results separated different stems \(s0: bass; "
                                         r"two: bass,drums\)"):
        cmp.mean_result([rs[0], result({"bass": [0.0, 0.0], "drums": [0.0, 0.0]}, model="two")])
    files = [write_json(r, tmp_path / f"{r['model']}.json") for r in rs]
    comma = write_json(rs[0], tmp_path / "seed,0.json")
    assert cmp.load_side(str(comma))["label"] == "s0 (seed,0.json)"  # an existing file: one result
    with pytest.raises(ValueError, match=r"s0.json: named twice in .* the mean would count one result twice"):
        cmp.load_side(f"{files[0]},{files[1]},{tmp_path / '.' / 's0.json'}")
    side = cmp.load_side(",".join(str(f) for f in files))
    assert side["per_track"]["t0"]["bass"]["SDR"] == 1.0 and len(side["members"]) == 3
