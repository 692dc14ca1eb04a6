"""The post graph of a mask model (stemcli.wavepost): numpy resampling equal to the torch
module's, its export as a second ONNX graph with parity, the runtime path and its refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from stemcli import wavepost
from stemcli.export import ExportError, export_run
from stemcli.modelcard import ModelFileError, load_card
from stemcli.runtime import OnnxSeparator
from stemcli_mmdense.model import DEFAULT_CONFIG, MMDenseNet, WaveCorrection

from conftest import TINY_MMDENSE as TINY

torch.set_num_threads(1)

# hidden 16, kernel 5: the dilated convolutions hold 1280 values each, stored as float16 with --weights float16
WAVE = {"hidden": 16, "decimate": 8, "layers": 2, "kernel": 5}


@pytest.mark.parametrize("d", [1, 3, 8, 32])
def test_numpy_resampling_equals_the_torch_module(d: int) -> None:
    """decimate / interpolate here are the module's down / up (the same taps, the same sums),
    for lengths around multiples of the factor, batched over leading axes."""
    torch.manual_seed(d)
    wc = WaveCorrection(2, (0, 1), d, 4, 1, 3)
    assert np.array_equal(wavepost.lowpass_fir(d), wc.fir_down.t().reshape(-1)[: 8 * d + 1].numpy())
    for t in (1, d, 5 * d + 1, 4410):
        x = torch.randn(2, 6, t)
        down = wavepost.decimate(x.numpy(), d)
        assert down.shape == (2, 6, -(-t // d)) and down.dtype == np.float32
        np.testing.assert_allclose(down, wc.down(x).numpy(), atol=1e-6)
        y = torch.randn(2, 2, down.shape[-1])
        up = wavepost.interpolate(y.numpy(), d, t)
        assert up.shape == (2, 2, t)
        np.testing.assert_allclose(up, wc.up(y, t).numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="asked from"):
        wavepost.interpolate(np.zeros((1, 3), np.float32), d, 3 * d + 1)


def test_check_post_names_the_bad_field() -> None:
    sources = ["vocals", "drums", "bass", "other"]
    good = {"type": "wave-pair", "pair": ["drums", "bass"], "decimate": 32}
    assert wavepost.check_post(good, sources) == good
    for bad, msg in [({**good, "type": "x"}, "post type must be 'wave-pair'"), (None, "post type must be"),
                     ({**good, "pair": ["drums", "drums"]}, "post pair must name two different sources"),
                     ({**good, "pair": ["drums", "piano"]}, "post pair must name two different sources"),
                     ({**good, "pair": "drums"}, "post pair must name two different sources"),
                     ({**good, "decimate": 0}, r"post decimate must be an integer in \[1, 1024\]"),
                     ({**good, "decimate": 2.0}, "post decimate must be an integer"),
                     ({**good, "decimate": True}, "post decimate must be an integer")]:
        with pytest.raises(ValueError, match=rf"m\.json: {msg}"):
            wavepost.check_post(bad, sources, "m.json")


def test_apply_post_moves_the_delta_between_the_pair_only() -> None:
    post = {"type": "wave-pair", "pair": ["bass", "vocals"], "decimate": 4}
    rng = np.random.default_rng(0)
    mix = rng.standard_normal((2, 2, 1001)).astype(np.float32)
    est = rng.standard_normal((2, 4, 2, 1001)).astype(np.float32)
    before = est.copy()
    seen = []

    def graph(low: np.ndarray) -> np.ndarray:
        seen.append(low)
        return np.ones((low.shape[0], 2, low.shape[-1]), np.float32)

    out = wavepost.apply_post(post, graph, mix, est, ["vocals", "drums", "bass", "other"])
    assert out is est and seen[0].shape == (2, 6, 251)
    # the graph sees the decimated mixture, then the first stem (bass), then the second (vocals)
    np.testing.assert_allclose(seen[0][:, 2:4], wavepost.decimate(before[:, 2], 4), atol=1e-6)
    np.testing.assert_allclose(seen[0][:, 4:6], wavepost.decimate(before[:, 0], 4), atol=1e-6)
    d = out - before
    assert np.array_equal(d[:, [1, 3]], np.zeros_like(d[:, [1, 3]]))
    np.testing.assert_allclose(d[:, 2], -d[:, 0], atol=1e-6)
    mid = slice(100, -100)  # a constant delta of 1 at the low rate interpolates back to ~1
    assert np.abs(d[:, 2, :, mid] - 1.0).max() < 2e-2
    with pytest.raises(ValueError, match=r"post graph returned shape \(2, 2, 250\), expected \(2, 2, 251\)"):
        wavepost.apply_post(post, lambda low: np.zeros((2, 2, 250), np.float32), mix, est, ["vocals", "drums", "bass", "other"])


def _wave_run(tmp_path: Path) -> tuple[Path, MMDenseNet]:
    """A run whose wave branch has random (not zero) output weights: its correction is visible."""
    run = tmp_path / "wave_run"
    run.mkdir()
    cfg = {**DEFAULT_CONFIG, **TINY, "wave": WAVE}
    torch.manual_seed(2)
    model = MMDenseNet(cfg)
    torch.nn.init.normal_(model.wave.out.weight, std=0.5)
    torch.nn.init.normal_(model.wave.out.bias, std=0.05)
    (run / "config.json").write_text(json.dumps({"model": cfg, "data": {"root": "nowhere"}}))
    torch.save({"model": model.state_dict(), "step": 3}, run / "best.pt")
    return run, model.eval()


def _song(tmp_path: Path, seconds: float) -> Path:
    t = np.arange(int(seconds * 44100)) / 44100
    x = 0.3 * np.sin(2 * np.pi * 55 * t) + 0.2 * np.sign(np.sin(2 * np.pi * 2 * t)) * (t % 0.5 < 0.02)
    path = tmp_path / f"song{seconds:g}.wav"
    sf.write(path, np.stack([x, 0.7 * x], axis=1).astype(np.float32), 44100)
    return path


@pytest.mark.parametrize("weights", ["float32", "float16"])
def test_wave_model_exports_two_graphs_that_match_torch(tmp_path: Path, weights: str) -> None:
    """The card lists the post graph (file, sha256, entry); onnxruntime through both graphs
    equals torch on a song long enough to run in time parts, where the masks alone would not;
    the stems sum to the mixture; a re-export from the card compares both graphs."""
    import onnxruntime as ort

    run, model = _wave_run(tmp_path)
    song = _song(tmp_path, 20.0)
    out = tmp_path / "models" / "w.onnx"
    card = export_run(run, out, check_audio=song, weights=weights)
    assert card["post"] == {"type": "wave-pair", "pair": ["drums", "bass"], "decimate": 8}
    assert card["files"]["post"]["path"] == "w.post.onnx" and (tmp_path / "models" / "w.post.onnx").is_file()
    assert max(card["export"]["parity_max_abs_diff"].values()) <= 1e-4
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["w.json", "w.onnx", "w.post.onnx", "w.pt"]
    sess = ort.InferenceSession(str(tmp_path / "models" / "w.post.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["low"] and [o.name for o in sess.get_outputs()] == ["delta"]
    if weights == "float16":
        assert card["export"]["weights"]["post_float16"]["tensors"] == 2  # the two dilated convolutions
    x = sf.read(song, dtype="float32", always_2d=True)[0].T[None]
    got = OnnxSeparator(out.with_suffix(".json"), threads=2).separate(x)
    ref = OnnxSeparator(out.with_suffix(".json"), backend="torch").separate(x)
    assert np.abs(got - ref).max() <= 1e-4
    np.testing.assert_allclose(got.sum(axis=1), x, atol=1e-5)
    with torch.inference_mode():
        masks_only = model.mask_stems(torch.from_numpy(x[..., : 3 * 44100])).numpy()
    assert np.abs(got[..., : 3 * 44100] - masks_only)[:, 1].max() > 1e-2  # the correction is there
    again = export_run(out.with_suffix(".json"), tmp_path / "again" / "w.onnx", check_audio=song)
    assert max(again["training"]["reexport"]["max_abs_diff_to_previous"].values()) <= 1e-6
    assert again["files"]["post"]["sha256"] == card["files"]["post"]["sha256"]


def test_post_graph_is_sha256_checked_and_must_agree_with_the_card(tmp_path: Path) -> None:
    run, _ = _wave_run(tmp_path)
    out = tmp_path / "w.onnx"
    export_run(run, out, check_audio=_song(tmp_path, 2.0))
    OnnxSeparator(out.with_suffix(".json"))
    post = tmp_path / "w.post.onnx"
    data = bytearray(post.read_bytes())
    data[len(data) // 2] ^= 0x01
    post.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match=r"w\.post\.onnx: sha256 mismatch"):
        OnnxSeparator(out.with_suffix(".json"))
    post.unlink()
    with pytest.raises(ModelFileError, match=r"w\.post\.onnx: model file not found"):
        OnnxSeparator(out.with_suffix(".json"))
    # a card that lost its post entry while its config keeps the branch: the torch backend names the mismatch
    card = load_card(out.with_suffix(".json"))
    del card["post"], card["_path"]
    out.with_suffix(".json").write_text(json.dumps(card))
    with pytest.raises(ValueError, match=r"w\.json: the card has no post entry, its architecture config has post graph"):
        OnnxSeparator(out.with_suffix(".json"), backend="torch")


def test_failed_wave_export_leaves_no_post_graph(tmp_path: Path) -> None:
    run, _ = _wave_run(tmp_path)
    out = tmp_path / "w.onnx"
    with pytest.raises(ExportError, match=r"w\.onnx: onnxruntime differs from torch"):
        export_run(run, out, check_audio=_song(tmp_path, 2.0), tolerance=-1.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["song2.wav", "wave_run"]


def test_cli_export_does_not_overwrite_any_file_it_would_write(tmp_path: Path) -> None:
    """Without --force, an existing card, weights file or post graph is refused too, not only
    the graph named by -o."""
    from click.testing import CliRunner

    from stemcli.cli import cli

    run, _ = _wave_run(tmp_path)
    song = _song(tmp_path, 2.0)
    models = tmp_path / "models"
    models.mkdir()
    for stale in ("w.post.onnx", "w.json", "w.pt"):
        (models / stale).write_text("keep")
        res = CliRunner().invoke(cli, ["export", str(run), "-o", str(models / "w.onnx"), "--check-audio", str(song)])
        assert res.exit_code != 0 and f"{stale}: exists (use --force to replace it)" in res.output
        assert (models / stale).read_text() == "keep" and not (models / "w.onnx").exists()
        (models / stale).unlink()
    (models / "w.post.onnx").write_text("keep")
    res = CliRunner().invoke(cli, ["export", str(run), "-o", str(models / "w.onnx"), "--check-audio", str(song), "--force"])
    assert res.exit_code == 0, res.output
    assert load_card(models / "w.json")["files"]["post"]["path"] == "w.post.onnx"
    OnnxSeparator(models / "w.json")  # the post graph written over the stale file: its sha256 matches
