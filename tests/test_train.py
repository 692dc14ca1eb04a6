"""The training loop on a tiny generated MUSDB-layout folder: loss goes down, resume, checkpoints."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from stemcli.train.loop import simple_sdr, train

from conftest import TINY_MMDENSE as TINY, load_script

torch.set_num_threads(1)
RATE = 44100


def _stems(rng: np.random.Generator, seconds: float) -> dict[str, np.ndarray]:
    """Four stems that differ in spectrum and time structure, as a mask model can learn."""
    t = np.arange(int(seconds * RATE)) / RATE
    f0 = rng.uniform(300, 600)
    vocals = 0.3 * np.sin(2 * np.pi * f0 * t + 3 * np.sin(2 * np.pi * 5 * t))
    hits = (t % rng.uniform(0.2, 0.3)) < 0.02
    drums = 0.5 * rng.standard_normal(t.size) * hits
    bass = 0.4 * np.sin(2 * np.pi * rng.uniform(50, 90) * t)
    other = 0.15 * sum(np.sin(2 * np.pi * f * t) for f in rng.uniform(1000, 3000, 3))
    return {"vocals": vocals, "drums": drums, "bass": bass, "other": other}


@pytest.fixture(scope="module")
def tiny_musdb(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("musdb")
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("valid", 1)):
        for i in range(n):
            folder = root / split / f"track{i}"
            folder.mkdir(parents=True)
            stems = _stems(rng, 3.0)
            for name, x in stems.items():
                sf.write(folder / f"{name}.wav", np.stack([x, 0.9 * x], 1).astype(np.float32), RATE, subtype="FLOAT")
            mix = sum(stems.values())
            sf.write(folder / "mixture.wav", np.stack([mix, 0.9 * mix], 1).astype(np.float32), RATE, subtype="FLOAT")
    return root


def _run(data: Path, out: Path, steps: int, resume: bool = False, log=lambda s: None) -> list[dict]:
    train("mmdense", data, out, steps=steps, seconds=0.5, lr=3e-3, threads=1, seed=0,  # batch: the default, 4
          val_every=10, val_excerpts=2, val_seconds=1.0, save_every=5, log_every=1, config=TINY,
          resume=resume, log=log)
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def _hand_edit(run: Path, key: str, value: object) -> None:
    """Set ``hyperparameters[key]`` in a run's config.json, as a user editing the file would."""
    cfg = json.loads((run / "config.json").read_text())
    cfg["hyperparameters"][key] = value
    (run / "config.json").write_text(json.dumps(cfg))


def test_twenty_steps_lower_the_loss(tiny_musdb: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    log = _run(tiny_musdb, out, 20)
    losses = [r["loss"] for r in log if "loss" in r]
    assert len(losses) == 20
    assert np.mean(losses[-5:]) < 0.9 * np.mean(losses[:5])
    vals = [r for r in log if "val_sdr" in r]
    assert [r["step"] for r in vals] == [10, 20]
    assert set(vals[0]["val_sdr"]) == {"vocals", "drums", "bass", "other", "mean"}
    # files: JSON config, weights-only checkpoints
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"]["architecture"] == "mmdense" and cfg["model"]["max_bin"] == 64
    assert cfg["hyperparameters"]["batch"] == 4
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ck["step"] == 20 and "optimizer" in ck
    best = torch.load(out / "best.pt", weights_only=True)
    assert best["step"] in (10, 20) and np.isfinite(best["val_sdr"])


def test_resume_continues_the_step_count(tiny_musdb: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    _run(tiny_musdb, out, 4)
    with pytest.raises(ValueError, match="resume"):
        _run(tiny_musdb, out, 6)
    log = _run(tiny_musdb, out, 6, resume=True)
    steps = [r["step"] for r in log if "loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 6
    assert not list(out.glob("*.partial"))


def test_interrupt_and_resume_match_an_uninterrupted_run(tiny_musdb: Path, tmp_path: Path) -> None:
    """SIGINT at step 3 saves and stops; resuming restores optimizer, generators and step,
    so the interrupted run's losses equal the uninterrupted run's."""
    a, b = tmp_path / "a", tmp_path / "b"
    full = [r["loss"] for r in _run(tiny_musdb, a, 6) if "loss" in r]

    def interrupt(line: str) -> None:
        if line.startswith("step 3 loss"):
            os.kill(os.getpid(), signal.SIGINT)

    first = _run(tiny_musdb, b, 6, log=interrupt)
    assert first[-1]["stopped"] == "signal" and first[-1]["step"] == 3
    split = [r["loss"] for r in _run(tiny_musdb, b, 6, resume=True) if "loss" in r]
    assert len(split) == 6
    assert np.allclose(full, split, rtol=1e-5)


def test_arguments_are_checked(tiny_musdb: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="steps or minutes"):
        train("mmdense", tiny_musdb, tmp_path / "x")
    with pytest.raises(ValueError, match="unknown architecture"):
        train("nosuchnet", tiny_musdb, tmp_path / "y", steps=1)
    with pytest.raises(ValueError, match="not found"):
        train("mmdense", tmp_path / "missing", tmp_path / "z", steps=1)


def test_simple_sdr_known_values() -> None:
    ref = np.random.default_rng(0).standard_normal((3, 2, 1000))
    sdr = simple_sdr(ref, 0.5 * ref)
    assert np.allclose(sdr, 10 * np.log10(4.0), atol=1e-6)
    silent = simple_sdr(np.zeros((1, 2, 100)), np.ones((1, 2, 100)))
    assert np.isnan(silent).all()


def test_resume_on_other_data_records_history_and_restarts_best(tiny_musdb: Path, tmp_path: Path) -> None:
    import shutil

    other = tmp_path / "other"
    shutil.copytree(tiny_musdb, other)
    out = tmp_path / "run"
    kw = dict(batch=2, seconds=0.5, threads=1, seed=0, config=TINY, val_every=2, val_excerpts=1, val_seconds=0.5)
    train("mmdense", tiny_musdb, out, steps=4, log=lambda m: None, **kw)
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ck["val_data"] == str(tiny_musdb) and np.isfinite(ck["best"])
    lines: list[str] = []
    train("mmdense", other, out, steps=6, resume=True, log=lines.append, **kw)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["data"]["root"] == str(other)
    assert [d["root"] for d in cfg["data_history"]] == [str(tiny_musdb), str(other)]
    assert any("starts again" in line for line in lines)
    assert torch.load(out / "best.pt", weights_only=True)["step"] > 4  # chosen on the new validation data


def test_config_overrides_merge_and_must_match_on_resume(tiny_musdb: Path, tmp_path: Path) -> None:
    from stemcli.train.loop import merge_config, read_config_overrides

    assert merge_config({"a": {"x": 1, "y": 2}, "b": 3}, {"a": {"y": 5}}) == {"a": {"x": 1, "y": 5}, "b": 3}
    out = tmp_path / "run"
    kw = dict(batch=2, seconds=0.5, threads=1, seed=0, val_every=2, val_excerpts=1, val_seconds=0.5, log=lambda m: None)
    train("mmdense", tiny_musdb, out, steps=2, config=merge_config(TINY, {"low": {"lstm": 3}}), **kw)
    model = json.loads((out / "config.json").read_text())["model"]
    assert model["low"] == {"growth": 4, "layers": [1, 1], "pool": [1, 1], "lstm": 3}
    assert model["full"]["lstm"] == 4
    with pytest.raises(ValueError, match="differs from the given overrides"):
        train("mmdense", tiny_musdb, out, steps=3, resume=True, config={"low": {"lstm": 5}}, **kw)
    train("mmdense", tiny_musdb, out, steps=3, resume=True, config={"low": {"lstm": 3}}, **kw)  # same: fine
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(ValueError, match="bad.json: the config file must hold a JSON object"):
        read_config_overrides(bad)
    bad.write_text("{nope")
    with pytest.raises(ValueError, match="bad.json: not valid JSON"):
        read_config_overrides(bad)


def test_cli_train_config_file_errors_name_the_file(tiny_musdb: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from stemcli.cli import cli

    res = CliRunner().invoke(cli, ["train", "mmdense", "--data", str(tiny_musdb), "--out", str(tmp_path / "r"),
                                   "--steps", "1", "--config", str(tmp_path / "missing.json")])
    assert res.exit_code != 0
    assert "missing.json: cannot read the config file" in res.output
    assert not (tmp_path / "r").exists()


def test_weighted_l1_is_the_weighted_mean_of_the_per_source_losses() -> None:
    from stemcli.train.loop import source_weights, weighted_l1

    est = torch.zeros(2, 3, 2, 10)
    ref = torch.zeros(2, 3, 2, 10)
    ref[:, 0] = 1.0  # per-source L1: 1, 2, 0
    ref[:, 1] = -2.0
    sources = ["a", "b", "c"]
    assert weighted_l1(est, ref, None).item() == pytest.approx(1.0)
    assert weighted_l1(est, ref, source_weights(sources, {"a": 1.0})).item() == pytest.approx(1.0)
    assert weighted_l1(est, ref, source_weights(sources, {"b": 3.0})).item() == pytest.approx((1 + 6 + 0) / 5)
    assert weighted_l1(est, ref, source_weights(sources, {"a": 2, "c": 4})).item() == pytest.approx((2 + 2) / 7)
    assert source_weights(sources, None) is None and source_weights(sources, {}) is None
    with pytest.raises(ValueError, match="unknown source.*d, e"):
        source_weights(sources, {"d": 1.0, "e": 2.0})
    for bad in (0.0, -1.0, float("nan"), float("inf"), "2", True):
        with pytest.raises(ValueError, match="loss weight of a must be a finite number > 0"):
            source_weights(sources, {"a": bad})


def test_parse_loss_weights() -> None:
    from stemcli.train.loop import parse_loss_weights

    assert parse_loss_weights(["drums=2", " bass = 1.5"]) == {"drums": 2.0, "bass": 1.5}
    for bad, msg in (("drums", "expected SOURCE=WEIGHT"), ("=2", "expected SOURCE=WEIGHT"),
                     ("drums=x", "'x' is not a number")):
        with pytest.raises(ValueError, match=msg):
            parse_loss_weights([bad])
    with pytest.raises(ValueError, match="drums given twice"):
        parse_loss_weights(["drums=2", "drums=3"])


def test_loss_weights_change_training_and_are_kept_on_resume(tiny_musdb: Path, tmp_path: Path) -> None:
    """The weights reach the gradients (all-ones weights train the same model as none, a heavily
    weighted source a different one), are stored in the run's config, kept by a resume without
    them, accepted when equal and refused when different."""
    kw = dict(batch=2, seconds=0.5, lr=3e-3, threads=1, seed=0, val_every=100, val_excerpts=1, val_seconds=0.5,
              log_every=1, config=TINY, log=lambda m: None)

    def params(out: Path) -> torch.Tensor:
        state = torch.load(out / "checkpoint.pt", weights_only=True)["model"]
        return torch.cat([v.flatten().float() for v in state.values()])

    def losses(out: Path) -> list[float]:
        return [r["loss"] for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "loss" in r]

    train("mmdense", tiny_musdb, tmp_path / "plain", steps=3, **kw)
    train("mmdense", tiny_musdb, tmp_path / "ones", steps=3, loss_weights={"drums": 1.0}, **kw)
    train("mmdense", tiny_musdb, tmp_path / "w", steps=2, loss_weights={"drums": 20.0}, **kw)
    train("mmdense", tiny_musdb, tmp_path / "w", steps=3, resume=True, **kw)  # keeps its weights
    straight = tmp_path / "w2"  # the same 3 steps without the interruption
    train("mmdense", tiny_musdb, straight, steps=3, loss_weights={"drums": 20.0}, **kw)
    assert losses(tmp_path / "w") == pytest.approx(losses(straight), rel=1e-5)
    assert torch.allclose(params(tmp_path / "w"), params(straight), atol=1e-6)
    plain = params(tmp_path / "plain")
    assert torch.allclose(params(tmp_path / "ones"), plain, atol=1e-6)
    assert (params(tmp_path / "w") - plain).abs().max() > 1e-4
    hyper = json.loads((tmp_path / "w" / "config.json").read_text())["hyperparameters"]
    assert hyper["loss_weights"] == {"drums": 20.0} and hyper["loss"] == "weighted L1 waveform"
    with pytest.raises(ValueError, match=r"trained with loss weights drums=20, not drums=2; resume without"):
        train("mmdense", tiny_musdb, tmp_path / "w", steps=4, resume=True, loss_weights={"drums": 2.0}, **kw)
    with pytest.raises(ValueError, match="trained with loss weights none, not drums=2"):
        train("mmdense", tiny_musdb, tmp_path / "plain", steps=4, resume=True, loss_weights={"drums": 2.0}, **kw)
    # the same weights written differently are the same run
    train("mmdense", tiny_musdb, tmp_path / "plain", steps=4, resume=True, loss_weights={"bass": 1}, **kw)
    train("mmdense", tiny_musdb, tmp_path / "w", steps=4, resume=True, loss_weights={"drums": 20, "bass": 1.0}, **kw)


def test_cli_train_loss_weight_errors(tiny_musdb: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from stemcli.cli import cli

    base = ["train", "mmdense", "--data", str(tiny_musdb), "--out", str(tmp_path / "r"), "--steps", "1"]
    res = CliRunner().invoke(cli, base + ["--loss-weight", "drum=2"])
    assert res.exit_code != 0
    assert "unknown source(s) drum" in res.output
    assert not (tmp_path / "r").exists()  # refused before the run folder is made
    res = CliRunner().invoke(cli, base + ["--loss-weight", "drums"])
    assert res.exit_code != 0 and "expected SOURCE=WEIGHT" in res.output
    bad_config = tmp_path / "bad.json"
    bad_config.write_text('{"frame": {"hidden": 6, "per_source": "yes"}}')
    res = CliRunner().invoke(cli, base + ["--config", str(bad_config)])
    assert res.exit_code != 0 and "frame.per_source must be true or false" in res.output
    assert not (tmp_path / "r").exists()  # a config the model refuses makes no run folder either


def test_bfloat16_forward_trains_and_the_run_keeps_its_precision(tiny_musdb: Path, tmp_path: Path) -> None:
    """precision="bfloat16" changes the forward pass (autocast: another first loss than float32's
    from the same weights and batch), still lowers the loss, keeps the weights float32, is stored
    in the run's config and kept on resume (an interrupted bfloat16 run resumed without the
    option has the losses of an uninterrupted one); a different precision on resume applies and
    is recorded, a run from before the option counts as float32, an unknown stored one is refused."""
    kw = dict(batch=4, seconds=0.5, lr=3e-3, threads=1, seed=0, val_every=100, val_excerpts=1, val_seconds=0.5,
              log_every=1, config=TINY, log=lambda m: None)

    def losses(out: Path) -> list[float]:
        return [r["loss"] for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "loss" in r]

    train("mmdense", tiny_musdb, tmp_path / "f32", steps=1, **kw)
    bf = tmp_path / "bf16"
    train("mmdense", tiny_musdb, bf, steps=12, precision="bfloat16", **kw)
    got = losses(bf)
    assert got[0] != pytest.approx(losses(tmp_path / "f32")[0], rel=1e-5)  # autocast is on
    assert got[0] == pytest.approx(losses(tmp_path / "f32")[0], rel=0.05)  # ... and close
    assert np.mean(got[-4:]) < 0.9 * np.mean(got[:4])
    state = torch.load(bf / "checkpoint.pt", weights_only=True)["model"]
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
    assert json.loads((bf / "config.json").read_text())["hyperparameters"]["precision"] == "bfloat16"
    cut = tmp_path / "cut"  # the same 12 steps interrupted at step 6, resumed without the option

    def interrupt(line: str) -> None:
        if line.startswith("step 6 loss"):
            os.kill(os.getpid(), signal.SIGINT)

    train("mmdense", tiny_musdb, cut, steps=12, precision="bfloat16", **{**kw, "log": interrupt})
    assert len(losses(cut)) == 6
    train("mmdense", tiny_musdb, cut, steps=12, resume=True, **kw)
    assert losses(cut) == pytest.approx(got, rel=1e-5)
    assert json.loads((cut / "config.json").read_text())["hyperparameters"]["precision"] == "bfloat16"
    train("mmdense", tiny_musdb, bf, steps=13, resume=True, precision="float32", **kw)  # back to float32
    cfg = json.loads((bf / "config.json").read_text())
    assert cfg["hyperparameters"]["precision"] == "float32"
    assert cfg["changes"] == [{"step": 12, "precision": ["bfloat16", "float32"]}]
    cfg_path = tmp_path / "f32" / "config.json"  # a run from before the option
    cfg = json.loads(cfg_path.read_text())
    del cfg["hyperparameters"]["precision"]
    cfg_path.write_text(json.dumps(cfg))
    train("mmdense", tiny_musdb, tmp_path / "f32", steps=2, resume=True, **kw)
    assert json.loads(cfg_path.read_text())["hyperparameters"]["precision"] == "float32"
    cfg = json.loads(cfg_path.read_text())
    with pytest.raises(ValueError, match="precision must be one of float32, bfloat16"):
        train("mmdense", tiny_musdb, tmp_path / "x", steps=1, precision="float16", **kw)
    cfg["hyperparameters"]["precision"] = "bf16"  # edited by hand
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="unknown precision 'bf16'"):
        train("mmdense", tiny_musdb, tmp_path / "f32", steps=2, resume=True, **kw)


def test_umx_trains_in_bfloat16(tiny_musdb: Path, tmp_path: Path) -> None:
    """The Open-Unmix architecture (LSTMs, linear layers) under the same autocast: same batches,
    losses within 2 % of float32's at every step."""
    from test_umx import TINY as TINY_UMX

    kw = dict(steps=6, batch=4, seconds=0.5, lr=3e-3, threads=1, seed=0, val_every=100, val_excerpts=1,
              val_seconds=0.5, log_every=1, config=TINY_UMX, log=lambda m: None)
    out = {}
    for precision in ("float32", "bfloat16"):
        train("umx", tiny_musdb, tmp_path / precision, precision=precision, **kw)
        out[precision] = [r["loss"] for r in map(json.loads, (tmp_path / precision / "log.jsonl").read_text().splitlines())
                          if "loss" in r]
    assert out["bfloat16"][0] != pytest.approx(out["float32"][0], rel=1e-6)  # autocast is on
    # ... and training follows float32's, step for step (0.2 % apart here)
    assert out["bfloat16"] == pytest.approx(out["float32"], rel=0.02)


def test_cli_train_precision_choice(tiny_musdb: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from stemcli.cli import cli

    res = CliRunner().invoke(cli, ["train", "mmdense", "--data", str(tiny_musdb), "--out", str(tmp_path / "r"),
                                   "--steps", "1", "--precision", "bf16"])
    assert res.exit_code == 2 and "'bf16' is not one of 'float32', 'bfloat16'" in res.output
    assert not (tmp_path / "r").exists()


def test_resume_keeps_the_runs_settings_and_records_new_ones(tiny_musdb: Path, tmp_path: Path) -> None:
    """A resume without --batch/--seconds/--lr trains with the run's own (not the defaults): an
    interrupted run resumed bare has the losses of an uninterrupted one.  Given anew they apply
    from the resumed step, are logged and recorded; another seed is refused."""
    kw = dict(threads=1, val_every=100, val_excerpts=1, val_seconds=0.5, log_every=1, config=TINY)
    run = dict(batch=3, seconds=0.4, lr=2e-3, seed=5)

    def losses(out: Path) -> list[float]:
        return [r["loss"] for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "loss" in r]

    train("mmdense", tiny_musdb, tmp_path / "full", steps=6, log=lambda m: None, **run, **kw)

    def interrupt(line: str) -> None:
        if line.startswith("step 3 loss"):
            os.kill(os.getpid(), signal.SIGINT)

    cut = tmp_path / "cut"
    train("mmdense", tiny_musdb, cut, steps=6, log=interrupt, **run, **kw)
    train("mmdense", tiny_musdb, cut, steps=6, resume=True, log=lambda m: None, **kw)  # nothing repeated
    assert losses(cut) == pytest.approx(losses(tmp_path / "full"), rel=1e-5)
    hyper = json.loads((cut / "config.json").read_text())["hyperparameters"]
    assert {k: hyper[k] for k in run} == run
    lines: list[str] = []
    train("mmdense", tiny_musdb, cut, steps=8, resume=True, batch=2, lr=1e-3, seconds=0.4, log=lines.append, **kw)
    cfg = json.loads((cut / "config.json").read_text())
    assert cfg["changes"] == [{"step": 6, "batch": [3, 2], "lr": [2e-3, 1e-3]}]  # seconds unchanged: not recorded
    assert cfg["hyperparameters"]["batch"] == 2 and cfg["hyperparameters"]["lr"] == 1e-3
    assert "from step 6: batch 3 -> 2, lr 0.002 -> 0.001" in lines
    assert any("batch 2 x 0.4 s" in line for line in lines)
    with pytest.raises(ValueError, match="trained with seed 5, not 0"):
        train("mmdense", tiny_musdb, cut, steps=9, resume=True, seed=0, log=lambda m: None, **kw)


def test_the_command_trains_under_tcmalloc_and_records_it(tiny_musdb: Path, tmp_path: Path) -> None:
    """`python -m stemcli train` re-runs itself under tcmalloc (when installed), logs it and
    writes it into the run's hyperparameters; resuming under another allocator appends it."""
    import subprocess
    import sys

    from stemcli import allocator

    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(TINY))
    out = tmp_path / "run"
    base = [sys.executable, "-m", "stemcli", "train", "mmdense", "--data", str(tiny_musdb), "--out", str(out),
            "--batch", "2", "--seconds", "0.5", "--threads", "1", "--val-every", "100", "--config", str(cfg)]
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "STEMCLI_ALLOCATOR", allocator.MARK)}
    want = "tcmalloc" if allocator.find_tcmalloc() else "system"
    r = subprocess.run(base + ["--steps", "1"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"allocator {want}" in r.stdout + r.stderr
    assert json.loads((out / "config.json").read_text())["hyperparameters"]["allocator"] == want
    r = subprocess.run(base + ["--steps", "2", "--resume"], capture_output=True, text=True,
                       env={**env, "STEMCLI_ALLOCATOR": "system"}, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "allocator system" in r.stdout + r.stderr
    hyper = json.loads((out / "config.json").read_text())["hyperparameters"]
    assert hyper["allocator"] == ("tcmalloc+system" if want == "tcmalloc" else "system")


def test_cli_help_shows_the_defaults_the_loop_uses() -> None:
    """`stemcli train --help` reads its defaults from the table the loop applies, so a changed
    default cannot leave the help text behind."""
    from click.testing import CliRunner

    import stemcli.train
    import stemcli.train.loop as loop
    from stemcli.cli import cli

    assert loop.RESUMABLE is stemcli.train.RESUMABLE and loop.PRECISIONS is stemcli.train.PRECISIONS
    text = " ".join(CliRunner().invoke(cli, ["train", "--help"], terminal_width=400).output.split())
    for key in ("batch", "seconds", "lr", "precision"):
        assert f"[default: {stemcli.train.RESUMABLE[key]}]" in text
    assert "[float32|bfloat16]" in text


def test_weight_average_is_the_mean_then_exponential() -> None:
    """``d = min(decay, 1 - 1/n)``: the plain mean of the weights seen so far until the decay
    caps it, then ``avg <- d * avg + (1 - d) * w``; integer buffers are copied, and the trained
    model is not touched."""
    from stemcli.train.loop import WeightAverage

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    start = {k: v.clone() for k, v in model.state_dict().items()}
    floats = ("0.weight", "0.bias", "1.weight", "1.bias")
    slow, fast = WeightAverage(model, 0.9), WeightAverage(model, 0.5)
    for i, offset in enumerate((1.0, 2.0, 4.0, 8.0)):  # the weights at steps 1-4: start + offset
        with torch.no_grad():
            for name in floats:
                model.state_dict()[name].copy_(start[name] + offset)
        model[1].num_batches_tracked.fill_(7 + i)
        slow.update(model)
        fast.update(model)
    # 0.9: d = 0, 1/2, 2/3, 3/4 -> the mean of the four; 0.5: d = 0, 1/2, then capped at 1/2
    want = {slow: (1 + 2 + 4 + 8) / 4, fast: 0.5 * (0.5 * (0.5 * 1 + 0.5 * 2) + 0.5 * 4) + 0.5 * 8}
    for avg, offset in want.items():
        got = avg.model.state_dict()
        for name in floats:
            assert torch.allclose(got[name], start[name] + offset, atol=1e-5), (avg.decay, name)
        assert int(got["1.num_batches_tracked"]) == 10
        assert not avg.model.training and not any(p.requires_grad for p in avg.model.parameters())
    for name in floats:  # the trained model keeps its own weights
        assert torch.allclose(model.state_dict()[name], start[name] + 8.0)
    with pytest.raises(ValueError, match="ema decay"):
        WeightAverage(model, 1.0)


def test_ema_scores_and_saves_the_average_and_resumes_exactly(tiny_musdb: Path, tmp_path: Path) -> None:
    """With ``ema`` the validation and ``best.pt`` use the averaged weights (not the trained ones),
    the checkpoint carries the average so an interrupted run ends where a straight one does, and
    the setting is recorded and enforced on resume."""
    kw = dict(batch=2, seconds=0.5, lr=3e-3, threads=1, seed=0, val_every=100, val_excerpts=1, val_seconds=0.5,
              log_every=1, config=TINY, log=lambda m: None)  # one validation, at the end
    straight, split = tmp_path / "straight", tmp_path / "split"
    train("mmdense", tiny_musdb, straight, steps=8, ema=0.9, **kw)

    def interrupt(line: str) -> None:
        if line.startswith("step 5 loss"):
            os.kill(os.getpid(), signal.SIGINT)

    train("mmdense", tiny_musdb, split, steps=8, ema=0.9, **{**kw, "log": interrupt})
    assert torch.load(split / "checkpoint.pt", weights_only=True)["step"] == 5
    train("mmdense", tiny_musdb, split, steps=8, resume=True, **kw)  # keeps its average
    a = torch.load(straight / "checkpoint.pt", weights_only=True)
    b = torch.load(split / "checkpoint.pt", weights_only=True)
    assert a["ema"]["updates"] == b["ema"]["updates"] == 8
    for name, v in a["ema"]["model"].items():
        assert torch.allclose(v.float(), b["ema"]["model"][name].float(), atol=1e-6), name
    trained, averaged = a["model"], a["ema"]["model"]
    assert max(float((trained[k].float() - averaged[k].float()).abs().max()) for k in trained) > 1e-4
    best = torch.load(straight / "best.pt", weights_only=True)
    assert best["step"] == 8  # best.pt is the average at the validated step, not the trained weights
    for name, v in averaged.items():
        assert torch.equal(best["model"][name], v), name
    hyper = json.loads((straight / "config.json").read_text())["hyperparameters"]
    assert hyper["ema"] == 0.9
    with pytest.raises(ValueError, match=r"trained with --ema 0.9, not --ema 0.99; resume without --ema"):
        train("mmdense", tiny_musdb, straight, steps=9, resume=True, ema=0.99, **kw)
    plain = tmp_path / "plain"
    train("mmdense", tiny_musdb, plain, steps=2, **kw)
    assert "ema" not in torch.load(plain / "checkpoint.pt", weights_only=True)
    with pytest.raises(ValueError, match="trained without weight averaging, not --ema 0.9"):
        train("mmdense", tiny_musdb, plain, steps=3, resume=True, ema=0.9, **kw)
    with pytest.raises(ValueError, match="ema decay must be in"):
        train("mmdense", tiny_musdb, tmp_path / "bad", steps=1, ema=1.5, **kw)
    _hand_edit(straight, "ema", "0.99")  # a hand-edited setting is checked
    with pytest.raises(ValueError, match=r"config.json: hyperparameters.ema must be a number in \(0, 1\), got '0.99'"):
        train("mmdense", tiny_musdb, straight, steps=9, resume=True, **kw)


def test_export_of_an_ema_run_without_best_takes_the_average(tiny_musdb: Path, tmp_path: Path) -> None:
    """A --ema run stopped before its first validation has no best.pt: export falls back to
    checkpoint.pt and must take the averaged weights there, not the trained ones."""
    from stemcli.export import load_run

    out = tmp_path / "run"
    train("mmdense", tiny_musdb, out, steps=3, batch=1, seconds=0.5, threads=1, val_every=100, val_excerpts=1,
          val_seconds=0.5, config=TINY, ema=0.9, log=lambda m: None)
    (out / "best.pt").unlink()
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    _, model, info = load_run(out)
    state = model.state_dict()
    assert info["weights"] == "checkpoint.pt (weight average)"
    for name, v in ck["ema"]["model"].items():
        assert torch.equal(state[name], v), name
    assert any(not torch.equal(state[k], ck["model"][k]) for k in state)


def test_ema_validation_scores_the_average(tiny_musdb: Path, tmp_path: Path, monkeypatch) -> None:
    """The model validate() sees is the averaged copy, not the one the optimizer moves."""
    import stemcli.train.loop as loop

    seen = []
    real = loop.validate
    monkeypatch.setattr(loop, "validate", lambda m, *a, **k: (seen.append(m), real(m, *a, **k))[1])
    out = tmp_path / "run"
    loop.train("mmdense", tiny_musdb, out, steps=2, batch=1, seconds=0.5, threads=1, val_every=2, val_excerpts=1,
               val_seconds=0.5, config=TINY, ema=0.5, log=lambda m: None)
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    state = seen[-1].state_dict()
    for name, v in ck["ema"]["model"].items():
        assert torch.equal(state[name], v), name
    assert any(not torch.equal(state[k], ck["model"][k]) for k in state)


def test_cli_train_ema_range(tiny_musdb: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from stemcli.cli import cli

    res = CliRunner().invoke(cli, ["train", "mmdense", "--data", str(tiny_musdb), "--out", str(tmp_path / "r"),
                                   "--steps", "1", "--ema", "1"])
    assert res.exit_code != 0 and "--ema" in res.output
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("chain", [False, True])
def test_a_wave_correction_run_trains_and_is_scored_in_torch(tiny_musdb: Path, tmp_path: Path, capsys,
                                                             chain: bool) -> None:
    """An mmdense run with the "wave" correction trains (the branch's zero
    output layer moves; with "chain" among three stems, both networks' output layers), and
    benchmarks/run_eval.py scores it with museval in torch: the SDR of
    the run's best.pt weights (not checkpoint.pt's), rebuilt here from config.json in eval mode,
    applied to the track and scored by museval directly, stem by stem."""
    from stemcli.evaluate import bss_eval, read_track
    from stemcli.train import archs

    out = tmp_path / "run"
    wave = {"hidden": 4, "decimate": 8, "layers": 2, "kernel": 3}
    cfg = {**TINY, "wave": {**wave, "pair": ["drums", "other", "bass"], "chain": True} if chain else wave}
    train("mmdense", tiny_musdb, out, steps=4, batch=1, seconds=0.5, lr=3e-3, threads=1, val_every=4,
          val_excerpts=1, val_seconds=0.5, config=cfg, log=lambda m: None)
    best = torch.load(out / "best.pt", weights_only=True)["model"]
    for key in (["wave.steps.0.out.weight", "wave.steps.1.out.weight"] if chain else ["wave.out.weight"]):
        assert best[key].abs().max() > 0, key
    ck = torch.load(out / "checkpoint.pt", weights_only=True)  # other weights there: loading it would show
    ck["model"] = {k: v * 0.5 if v.dtype.is_floating_point else v for k, v in ck["model"].items()}
    torch.save(ck, out / "checkpoint.pt")
    run_cfg = json.loads((out / "config.json").read_text())["model"]
    model = archs.build(run_cfg)
    model.load_state_dict(best)
    model.eval()
    mix, rate, refs = read_track(tiny_musdb / "valid" / "track0")
    with torch.no_grad():
        est = model(torch.from_numpy(mix[None].astype(np.float32)))[0].numpy()
    names = list(run_cfg["sources"])
    frames = bss_eval({k: refs[k] for k in names}, {k: est[i] for i, k in enumerate(names)}, rate)

    mod = load_script("benchmarks/run_eval.py")
    rc = mod.main([f"w={out}", "--data", str(tiny_musdb), "--split", "valid", "--json-dir", str(tmp_path / "j")])
    assert rc == 0
    result = json.loads((tmp_path / "j" / "w.json").read_text())
    assert result["run"]["weights"] == "best.pt" and result["run"]["step"] == 4
    assert sorted(result["per_track"]["track0"]) == sorted(names)
    for k in names:
        want = float(np.nanmedian(frames[k]["SDR"]))
        assert abs(result["per_track"]["track0"][k]["SDR"] - want) < 1e-3, k
    rc = mod.main([f"x={tmp_path / 'nothing'}", "--data", str(tiny_musdb), "--json-dir", str(tmp_path / "j")])
    assert rc == 1 and "error: x: " in capsys.readouterr().err


def test_mask_loss_is_the_weighted_mean_over_the_estimates_and_trains(tiny_musdb: Path, tmp_path: Path,
                                                                     monkeypatch) -> None:
    """training_loss with "mask_loss" 1 is the mean of the corrected stems' and the masks'
    stems' L1 losses (per-source weights inside each); a run trains with it, records it in its
    config and keeps it on resume."""
    from stemcli.train import archs
    from stemcli.train.loop import source_weights, training_loss, weighted_l1

    cfg = {**archs.default_config("mmdense"), **TINY,
           "wave": {"hidden": 4, "decimate": 8, "layers": 2, "kernel": 3, "mask_loss": 1.0}}
    torch.manual_seed(0)
    model = archs.build(cfg)
    torch.nn.init.normal_(model.wave.out.weight, std=0.5)
    mix, ref = torch.randn(2, 2, 4000), torch.randn(2, 4, 2, 4000)
    weights = source_weights(list(cfg["sources"]), {"drums": 2.0})
    with torch.no_grad():
        got = training_loss(model, mix, ref, weights)
        out, masks = model(mix), model.mask_stems(mix)
    want = (weighted_l1(out, ref, weights) + weighted_l1(masks, ref, weights)) / 2
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    assert abs(got.item() - weighted_l1(out, ref, weights).item()) > 1e-4  # not the output's loss alone
    from stemcli_mmdense.model import MMDenseNet

    seen: list[int] = []
    real = MMDenseNet.training_estimates

    def spy(self, wave):  # the training loop's forward goes through training_estimates
        terms = real(self, wave)
        seen.append(len(terms))
        return terms

    monkeypatch.setattr(MMDenseNet, "training_estimates", spy)
    out_dir = tmp_path / "run"
    train("mmdense", tiny_musdb, out_dir, steps=3, batch=1, seconds=0.5, lr=3e-3, threads=1, val_every=3,
          val_excerpts=1, val_seconds=0.5, config={**TINY, "wave": cfg["wave"]}, log=lambda m: None)
    assert seen == [2, 2, 2]  # three steps, two estimates each
    assert json.loads((out_dir / "config.json").read_text())["model"]["wave"]["mask_loss"] == 1.0
    train("mmdense", tiny_musdb, out_dir, steps=4, batch=1, seconds=0.5, lr=3e-3, threads=1, val_every=4,
          val_excerpts=1, val_seconds=0.5, resume=True, log=lambda m: None)
    assert torch.load(out_dir / "checkpoint.pt", weights_only=True)["step"] == 4
    assert seen == [2, 2, 2, 2]  # the resumed step still trains the masks' stems


def test_mask_loss_sends_gradient_to_the_mask_net_and_leaves_other_models_alone() -> None:
    """The masks' term reaches the mask net's weights (W 0 and W 1 give it different gradients
    from the same weights and batch); a model without training_estimates (Open-Unmix) gets
    exactly the loss of its output; estimates whose weights sum to 0 are refused."""
    from stemcli.train import archs
    from stemcli.train.loop import training_loss, weighted_l1

    mix, ref = torch.randn(1, 2, 4000), torch.randn(1, 4, 2, 4000)
    grads = []
    for w in (0.0, 1.0):
        torch.manual_seed(0)
        model = archs.build({**archs.default_config("mmdense"), **TINY,
                             "wave": {"hidden": 4, "decimate": 8, "layers": 2, "kernel": 3, "mask_loss": w}})
        torch.nn.init.normal_(model.wave.out.weight, std=0.5)
        training_loss(model, mix, ref, None).backward()
        grads.append(model.stem[0].weight.grad.clone())
    assert torch.max(torch.abs(grads[0] - grads[1])) > 1e-6
    torch.manual_seed(0)
    umx = archs.build({**archs.default_config("umx"), "hidden_size": 16, "nb_layers": 1, "n_fft": 512, "hop": 128})
    with torch.no_grad():
        assert torch.equal(training_loss(umx, mix, ref, None), weighted_l1(umx(mix).float(), ref, None))

    class NoWeight(torch.nn.Module):
        def training_estimates(self, x):
            return [(x, 0.0)]

    with pytest.raises(ValueError, match="NoWeight.training_estimates: needs at least one estimate"):
        training_loss(NoWeight(), mix, ref, None)


def test_finetune_wave_trains_the_branch_alone(tiny_musdb: Path, tmp_path: Path) -> None:
    """export/finetune_wave.py: on a finished run, only the "wave" branch moves; every other
    weight (BatchNorm statistics included) is the run's; it refuses a config without the branch
    and an existing output folder."""
    base = tmp_path / "base"
    train("mmdense", tiny_musdb, base, steps=2, batch=1, seconds=0.5, threads=1, val_every=2, val_excerpts=1,
          val_seconds=0.5, config=TINY, log=lambda m: None)
    cfg = tmp_path / "wave.json"
    cfg.write_text(json.dumps({"wave": {"hidden": 4, "decimate": 8, "layers": 2, "kernel": 3}}))
    mod = load_script("export/finetune_wave.py")
    out = tmp_path / "w"
    args = ["--run", str(base), "--config", str(cfg), "--data", str(tiny_musdb), "--minutes", "0.03",
            "--out", str(out), "--seconds", "0.5", "--batch", "1", "--lr", "3e-3"]
    assert mod.main(args) == 0
    before = torch.load(base / "best.pt", weights_only=True)["model"]
    after = torch.load(out / "best.pt", weights_only=True)["model"]
    assert set(after) - set(before) == {k for k in after if k.startswith("wave.")}
    for k, v in before.items():
        assert torch.equal(after[k], v), k
    assert after["wave.out.weight"].abs().max() > 0
    assert json.loads((out / "config.json").read_text())["model"]["wave"]["hidden"] == 4
    assert mod.main(args) == 1  # the folder exists now
    # --steps ends a run before its minutes do (step-matched comparisons)
    common = ["--run", str(base), "--config", str(cfg), "--data", str(tiny_musdb), "--seconds", "0.5", "--batch", "1"]
    counted = tmp_path / "w3"
    assert mod.main([*common, "--out", str(counted), "--minutes", "5", "--steps", "3"]) == 0
    assert json.loads((counted / "config.json").read_text())["finetune"]["steps"] == 3
    assert mod.main([*common, "--out", str(tmp_path / "w0"), "--minutes", "5", "--steps", "0"]) == 1
    assert not (tmp_path / "w0").exists()
    plain = tmp_path / "plain.json"
    plain.write_text("{}")
    assert mod.main(["--run", str(base), "--config", str(plain), "--data", str(tiny_musdb), "--minutes", "0.01",
                     "--out", str(tmp_path / "x")]) == 1


def test_coherent_reaches_the_sampler_and_is_recorded_and_enforced(tiny_musdb: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """``coherent`` is the training set's ``coherent_prob`` (never the validation set's), is stored
    in the run's config, kept on resume, and a different value on resume is an error naming it."""
    import stemcli.train.loop as loop

    seen: list[tuple[bool, float]] = []
    real = loop.StemDataset

    def spy(*args, **kwargs):
        seen.append((kwargs["augment"], kwargs.get("coherent_prob", 0.0)))
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "StemDataset", spy)
    kw = dict(batch=2, seconds=0.5, threads=1, val_every=100, val_excerpts=1, val_seconds=0.5, config=TINY,
              log=lambda m: None)
    run = tmp_path / "run"
    train("mmdense", tiny_musdb, run, steps=1, coherent=0.5, **kw)
    assert seen == [(True, 0.5), (False, 0.0)]
    assert json.loads((run / "config.json").read_text())["hyperparameters"]["coherent"] == 0.5
    seen.clear()
    train("mmdense", tiny_musdb, run, steps=2, resume=True, **kw)  # kept without the option
    assert seen == [(True, 0.5), (False, 0.0)]
    with pytest.raises(ValueError, match=r"config.json: the run was trained with --coherent 0.5, not 0.25; "
                                         r"resume without --coherent"):
        train("mmdense", tiny_musdb, run, steps=3, resume=True, coherent=0.25, **kw)
    plain = tmp_path / "plain"
    seen.clear()
    train("mmdense", tiny_musdb, plain, steps=1, **kw)
    assert seen == [(True, 0.0), (False, 0.0)]
    assert "coherent" not in json.loads((plain / "config.json").read_text())["hyperparameters"]  # as before
    with pytest.raises(ValueError, match=r"trained with --coherent 0.0, not 1.0"):
        train("mmdense", tiny_musdb, plain, steps=2, resume=True, coherent=1.0, **kw)
    with pytest.raises(ValueError, match=r"coherent must be in \[0, 1\], got 1.5"):
        train("mmdense", tiny_musdb, tmp_path / "bad", steps=1, coherent=1.5, **kw)
    for bad, shown in (("0.5", "'0.5'"), (1.5, "1.5"), (True, "True")):  # a hand-edited setting is checked
        _hand_edit(run, "coherent", bad)
        with pytest.raises(ValueError, match=r"config.json: hyperparameters.coherent must be a number in \[0, 1\], "
                                             rf"got {shown}$"):
            train("mmdense", tiny_musdb, run, steps=3, resume=True, **kw)


def test_cli_train_coherent_passes_through_and_is_range_checked(tiny_musdb: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    import stemcli.train.loop as loop
    from stemcli.cli import cli

    res = CliRunner().invoke(cli, ["train", "mmdense", "--data", str(tiny_musdb), "--out", str(tmp_path / "r"),
                                   "--steps", "1", "--coherent", "1.5"])
    assert res.exit_code != 0 and "--coherent" in res.output
    assert not (tmp_path / "r").exists()
    got: list[float | None] = []
    monkeypatch.setattr(loop, "train", lambda *a, **k: got.append(k["coherent"]))
    for extra, want in (([], None), (["--coherent", "0.5"], 0.5)):
        res = CliRunner().invoke(cli, ["train", "mmdense", "--data", str(tiny_musdb), "--out", str(tmp_path / "r"),
                                       "--steps", "1", *extra])
        assert res.exit_code == 0, res.output
    assert got == [None, 0.5]
