"""The post graph of a mask model (stemcli.wavepost): the exported graph equal to the torch
module's correction, the card and export with parity, the runtime path and its refusals."""

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
def test_post_graph_on_onnxruntime_equals_the_torch_module(d: int, tmp_path: Path) -> None:
    """numpy's blocks are the module's; the exported post graph on onnxruntime gives the
    module's delta (down, convolutions, up) for lengths around multiples of the factor and a
    batch of 2 (dynamic axes); the taps are wavepost's."""
    import onnxruntime as ort

    from stemcli.export import _onnx_export
    from stemcli_mmdense.model import _PostNet

    torch.manual_seed(d)
    wc = WaveCorrection(2, (0, 1), d, 4, 2, 3).eval()
    torch.nn.init.normal_(wc.out.weight, std=0.5)
    fir = wavepost.lowpass_fir(d)
    phases = wavepost.polyphase(d)
    assert phases.shape == (d, 9) and all(phases[k % d, k // d] == fir[k] for k in range(fir.size))
    # the module's polyphase resampling against the plain filters: a stride-D convolution with the
    # taps centred on each kept sample, and a transposed one with D times the taps
    h = torch.from_numpy(fir).double().reshape(1, 1, -1)
    wc64 = WaveCorrection(2, (0, 1), d, 4, 2, 3).double()
    x = torch.randn(2, 3, 5 * d + 7, dtype=torch.float64)
    plain_down = torch.nn.functional.conv1d(x.reshape(6, 1, -1), h, stride=d, padding=4 * d).reshape(2, 3, -1)
    torch.testing.assert_close(wc64.down(x), plain_down, atol=1e-12, rtol=0)
    y = torch.randn(2, 3, 6, dtype=torch.float64)
    plain_up = torch.nn.functional.conv_transpose1d(y.reshape(6, 1, -1), d * h, stride=d)[..., 4 * d : 4 * d + 6 * d - 1]
    # (D x taps is rounded to float32 in the module's buffer: exact for powers of two, 1e-7 otherwise)
    torch.testing.assert_close(wc64.up(y, 6 * d - 1), plain_up.reshape(2, 3, -1), atol=1e-6, rtol=0)
    path = tmp_path / "post.onnx"
    _onnx_export(_PostNet(wc).eval(), torch.randn(1, 6, 20 + 8, d), path, ["blocks", "delta"],
                 {"blocks": {0: "batch", 2: "frames"}, "delta": {0: "batch", 2: "samples"}})
    # the branch's convolutions are exported as 2-d (1 x kernel) convolutions, onnxruntime's
    # faster kernels (export/README, session 29); the up-sampling's is the one 1-d convolution
    import onnx

    kernels = sorted(tuple(a.ints) for n in onnx.load(str(path)).graph.node if n.op_type == "Conv"
                     for a in n.attribute if a.name == "kernel_shape")
    assert kernels == [(1, 1), (1, 1), (1, 3), (1, 3), (9,)], kernels
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for t in (1, d, 5 * d + 1, 4410):
        mix, a, b = (torch.randn(2, 2, t) for _ in range(3))
        x = torch.cat([mix, a, b], dim=1)
        got_blocks = wavepost.blocks([mix.numpy(), a.numpy(), b.numpy()], d)
        assert got_blocks.shape == (2, 6, -(-t // d) + 8, d)
        assert np.array_equal(got_blocks, wc.to_blocks(x).numpy())
        with torch.no_grad():
            want = wc.up(wc.core(wc.down(x)), t).numpy()
        got = sess.run(None, {"blocks": got_blocks})[0]
        assert got.shape == (2, 2, -(-t // d) * d)
        np.testing.assert_allclose(got[..., :t], want, atol=1e-5)


def test_check_post_names_the_bad_field() -> None:
    sources = ["vocals", "drums", "bass", "other"]
    good = {"type": "wave-pair", "pair": ["drums", "bass"], "decimate": 32}
    assert wavepost.check_post(good, sources) == good
    three = {**good, "pair": ["drums", "other", "bass"]}
    assert wavepost.check_post(three, sources) == three
    for bad, msg in [({**good, "type": "x"}, "post type must be 'wave-pair'"), (None, "post type must be"),
                     ({**good, "pair": ["drums", "drums"]}, "post pair must name two or more different sources"),
                     ({**good, "pair": ["drums", "piano"]}, "post pair must name two or more different sources"),
                     ({**good, "pair": "drums"}, "post pair must name two or more different sources"),
                     ({**good, "pair": ["drums"]}, "post pair must name two or more different sources"),
                     ({**good, "pair": ["drums", "bass", "drums"]}, "post pair must name two or more different"),
                     ({**good, "pair": [["drums"], "bass"]}, "post pair must name two or more different"),
                     ({**good, "decimate": 0}, r"post decimate must be an integer in \[1, 1024\]"),
                     ({**good, "decimate": 2.0}, "post decimate must be an integer"),
                     ({**good, "decimate": True}, "post decimate must be an integer")]:
        with pytest.raises(ValueError, match=rf"m\.json: {msg}"):
            wavepost.check_post(bad, sources, "m.json")


def test_apply_post_moves_the_delta_between_the_pair_only() -> None:
    post = {"type": "wave-pair", "pair": ["bass", "vocals"], "decimate": 4}
    names = ["vocals", "drums", "bass", "other"]
    rng = np.random.default_rng(0)
    mix = rng.standard_normal((2, 2, 1001)).astype(np.float32)
    est = rng.standard_normal((2, 4, 2, 1001)).astype(np.float32)
    before = est.copy()
    seen = []

    def graph(blocks: np.ndarray) -> np.ndarray:
        seen.append(blocks)
        return np.tile(np.arange(blocks.shape[2] * 4 - 32, dtype=np.float32), (2, 2, 1))

    out = wavepost.apply_post(post, graph, mix, est, names)
    assert out is est and seen[0].shape == (2, 6, 251 + 8, 4)
    # the graph sees the mixture, then the first stem (bass), then the second (vocals), after 16 zeros
    flat = seen[0].reshape(2, 6, -1)
    assert np.array_equal(flat[:, :, :16], np.zeros((2, 6, 16), np.float32))
    assert np.array_equal(flat[:, 0:2, 16:1017], mix)
    assert np.array_equal(flat[:, 2:4, 16:1017], before[:, 2])
    assert np.array_equal(flat[:, 4:6, 16:1017], before[:, 0])
    assert not flat[:, :, 1017:].any()
    d = out - before
    assert np.array_equal(d[:, [1, 3]], np.zeros_like(d[:, [1, 3]]))
    ramp = np.arange(1001, dtype=np.float32)  # the first `time` samples of the graph's output
    np.testing.assert_allclose(d[:, 2], np.broadcast_to(ramp, (2, 2, 1001)), atol=1e-3)
    np.testing.assert_allclose(d[:, 0], -np.broadcast_to(ramp, (2, 2, 1001)), atol=1e-3)
    with pytest.raises(ValueError, match=r"post graph returned shape \(2, 2, 1000\), expected \(2, 2, 1004\)"):
        wavepost.apply_post(post, lambda blocks: np.zeros((2, 2, 1000), np.float32), mix, est, names)


def test_apply_post_with_three_stems_adds_two_corrections_and_takes_both_from_the_last() -> None:
    """pair [a, b, c]: the graph sees the mixture, a, b, c; its output's first channels are a's
    correction, the next b's, and c loses both; the fourth stem is untouched; a graph that
    returns one correction's channels is refused."""
    post = {"type": "wave-pair", "pair": ["drums", "other", "bass"], "decimate": 4}
    names = ["vocals", "drums", "bass", "other"]
    rng = np.random.default_rng(1)
    mix = rng.standard_normal((1, 2, 403)).astype(np.float32)
    est = rng.standard_normal((1, 4, 2, 403)).astype(np.float32)
    before = est.copy()
    corr = rng.standard_normal((1, 4, 101 * 4)).astype(np.float32)
    seen = []

    def graph(blocks: np.ndarray) -> np.ndarray:
        seen.append(blocks)
        return corr

    out = wavepost.apply_post(post, graph, mix, est, names)
    flat = seen[0].reshape(1, 8, -1)
    assert seen[0].shape == (1, 8, 101 + 8, 4)
    for k, part in enumerate([mix, before[:, 1], before[:, 3], before[:, 2]]):
        assert np.array_equal(flat[:, 2 * k : 2 * k + 2, 16:419], part)
    d = out - before
    assert np.array_equal(d[:, 0], np.zeros_like(d[:, 0]))
    np.testing.assert_allclose(d[:, 1], corr[:, 0:2, :403], atol=1e-6)
    np.testing.assert_allclose(d[:, 3], corr[:, 2:4, :403], atol=1e-6)
    np.testing.assert_allclose(d[:, 2], -(corr[:, 0:2, :403] + corr[:, 2:4, :403]), atol=1e-5)
    np.testing.assert_allclose(out.sum(axis=1), before.sum(axis=1), atol=1e-5)
    with pytest.raises(ValueError, match=r"post graph returned shape \(1, 2, 404\), expected \(1, 4, 404\)"):
        wavepost.apply_post(post, lambda blocks: corr[:, :2], mix, est, names)


def _wave_run(tmp_path: Path, wave: dict | None = None) -> tuple[Path, MMDenseNet]:
    """A run whose wave branch has random (not zero) output weights: its correction is visible."""
    run = tmp_path / "wave_run"
    run.mkdir()
    cfg = {**DEFAULT_CONFIG, **TINY, "wave": wave or WAVE}
    torch.manual_seed(2)
    model = MMDenseNet(cfg)
    for net in getattr(model.wave, "steps", [model.wave]):  # a WaveChain's networks, or the one
        torch.nn.init.normal_(net.out.weight, std=0.5)
        torch.nn.init.normal_(net.out.bias, std=0.05)
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
    assert [i.name for i in sess.get_inputs()] == ["blocks"] and [o.name for o in sess.get_outputs()] == ["delta"]
    if weights == "float16":
        assert card["export"]["weights"]["post_float16"]["tensors"] == 2  # the two dilated convolutions
    x = sf.read(song, dtype="float32", always_2d=True)[0].T[None]
    got = OnnxSeparator(out.with_suffix(".json"), threads=2).separate(x)
    ref = OnnxSeparator(out.with_suffix(".json"), backend="torch").separate(x)
    assert np.abs(got - ref).max() <= 1e-4
    intra = OnnxSeparator(tmp_path / "models" / "w.post.onnx", threads=2, parallel="intra")  # the model's card
    assert np.abs(intra.separate(x) - got).max() <= 1e-5
    np.testing.assert_allclose(got.sum(axis=1), x, atol=1e-5)
    with torch.inference_mode():
        masks_only = model.mask_stems(torch.from_numpy(x[..., : 3 * 44100])).numpy()
    assert np.abs(got[..., : 3 * 44100] - masks_only)[:, 1].max() > 1e-2  # the correction is there
    with pytest.raises(ValueError, match=r"w\.post\.onnx: a name ending in \.post\.onnx is taken"):
        export_run(run, tmp_path / "models" / "w.post.onnx")
    again = export_run(out.with_suffix(".json"), tmp_path / "again" / "w.onnx", check_audio=song)
    assert max(again["training"]["reexport"]["max_abs_diff_to_previous"].values()) <= 1e-6
    assert again["files"]["post"]["sha256"] == card["files"]["post"]["sha256"]


@pytest.mark.parametrize("groups", [1, 2, "chain"])
def test_three_stem_wave_model_exports_and_runs_like_torch(tmp_path: Path, groups: int | str) -> None:
    """A correction among drums, other and bass: the post graph takes the mixture and three
    stems and returns two corrections; onnxruntime through both graphs equals torch, the stems
    sum to the mixture, vocals are the masks' alone, and a post graph of the two-stem shape is
    refused by this card, naming the file.  With ``groups`` 2 (a network per correction, hidden
    32: ``mmdense35``'s shape) the grouped convolutions are stored as float16 as well.  With
    ``"chain"`` (two two-stem networks in turn, hidden 32: the second sees the bass the first
    corrected) the card and graph interface are the same, and all four dilated convolutions
    are stored as float16."""
    wave = {**WAVE, "pair": ["drums", "other", "bass"]}
    if groups == 2:
        wave.update(hidden=32, groups=groups)  # 32 x 16 x 5 = 2560 values per dilated convolution
    if groups == "chain":
        wave.update(hidden=32, chain=True)  # 32 x 32 x 5 per dilated convolution, 2 per network
    run, model = _wave_run(tmp_path, wave)
    song = _song(tmp_path, 6.0)
    out = tmp_path / "models" / "w3.onnx"
    card = export_run(run, out, check_audio=song, weights="float32" if groups == 1 else "float16")
    if groups != 1:
        assert card["export"]["weights"]["post_float16"]["tensors"] == (2 if groups == 2 else 4)
    assert card["post"] == {"type": "wave-pair", "pair": ["drums", "other", "bass"], "decimate": 8}
    assert max(card["export"]["parity_max_abs_diff"].values()) <= 1e-4
    assert card["io"]["post"].startswith("blocks [batch, 4 x channels, frames + 8, 8] float32 (mixture, drums, other, bass")
    assert "-> delta [batch, 2 x channels" in card["io"]["post"] and "all subtracted from bass" in card["io"]["post"]
    x = sf.read(song, dtype="float32", always_2d=True)[0].T[None]
    got = OnnxSeparator(out.with_suffix(".json"), threads=1).separate(x)
    ref = OnnxSeparator(out.with_suffix(".json"), backend="torch").separate(x)
    assert np.abs(got - ref).max() <= 1e-4
    np.testing.assert_allclose(got.sum(axis=1), x, atol=1e-5)
    with torch.inference_mode():
        masks_only = model.mask_stems(torch.from_numpy(x)).numpy()
    assert np.abs(got[:, 0] - masks_only[:, 0]).max() <= 1e-5  # vocals: not in the pair
    assert all(np.abs(got[:, k] - masks_only[:, k]).max() > 1e-3 for k in (1, 2, 3))
    reordered = json.loads(out.with_suffix(".json").read_text())
    reordered["post"]["pair"] = ["other", "drums", "bass"]  # the graph cannot tell; torch's config can
    (tmp_path / "r.json").write_text(json.dumps({**reordered, "files": {
        k: {**v, "path": str(out.parent / v["path"])} for k, v in reordered["files"].items()}}))
    with pytest.raises(ValueError, match=r"r\.json: the card's post entry .* is not its architecture config's"):
        OnnxSeparator(tmp_path / "r.json", backend="torch")
    (tmp_path / "two").mkdir()
    two_run, _ = _wave_run(tmp_path / "two", WAVE)
    export_run(two_run, tmp_path / "two" / "m.onnx")
    (tmp_path / "models" / "w3.post.onnx").write_bytes((tmp_path / "two" / "m.post.onnx").read_bytes())
    bad = json.loads(out.with_suffix(".json").read_text())
    bad["files"]["post"]["sha256"] = json.loads((tmp_path / "two" / "m.json").read_text())["files"]["post"]["sha256"]
    out.with_suffix(".json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=r"w3\.post\.onnx: the post graph's input has shape .*3 stems"):
        OnnxSeparator(out.with_suffix(".json"))


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
    # a card with half of the post graph's entries is refused by either backend
    card = load_card(out.with_suffix(".json"))
    del card["_path"]
    for drop in ("post", "files"):
        broken = json.loads(json.dumps(card))
        del (broken if drop == "post" else broken["files"])["post"]
        out.with_suffix(".json").write_text(json.dumps(broken))
        for backend in ("onnx", "torch"):
            with pytest.raises(ValueError, match=r"w\.json: a post graph needs both the card's post entry and "
                                                 rf"files\.post; this card has only {'files.post' if drop == 'post' else 'post'}"):
                OnnxSeparator(out.with_suffix(".json"), backend=backend)
    # a card that lost both while its config keeps the branch: the torch backend names the mismatch
    del card["post"], card["files"]["post"]
    out.with_suffix(".json").write_text(json.dumps(card))
    with pytest.raises(ValueError, match=r"w\.json: the card has no post entry, its architecture config has post graph"):
        OnnxSeparator(out.with_suffix(".json"), backend="torch")


def test_post_graph_of_another_shape_is_refused_and_alignment_covers_the_decimation(tmp_path: Path) -> None:
    """A card whose decimation does not match its post graph is refused at load, naming the
    file and the shape needed; the card's alignment is a multiple of the decimation, so time
    parts start on the post graph's grid too."""
    run, _ = _wave_run(tmp_path, {**WAVE, "decimate": 3})
    out = tmp_path / "w.onnx"
    card = export_run(run, out, check_audio=_song(tmp_path, 2.0))
    assert card["alignment"] == 3 * 1024  # lcm(hop 128 x stride 8, 3)
    card["post"]["decimate"] = 4
    out.with_suffix(".json").write_text(json.dumps(card))
    with pytest.raises(ValueError, match=r"w\.post\.onnx: the post graph's input has shape \['batch', 6, 'frames', 3\]; "
                                         r"the card \(2 channels, 2 stems, decimate 4\) needs \[batch, 6, frames \+ 8, 4\]"):
        OnnxSeparator(out.with_suffix(".json"))


def test_export_without_post_graph_removes_the_replaced_models_one(tmp_path: Path) -> None:
    """Re-exporting a name that held a model with a post graph, with a model without one,
    leaves no unlisted NAME.post.onnx behind."""
    run, _ = _wave_run(tmp_path)
    song = _song(tmp_path, 2.0)
    out = tmp_path / "models" / "w.onnx"
    export_run(run, out, check_audio=song)
    plain = tmp_path / "plain_run"
    plain.mkdir()
    cfg = {**DEFAULT_CONFIG, **TINY}
    (plain / "config.json").write_text(json.dumps({"model": cfg, "data": {"root": "nowhere"}}))
    torch.save({"model": MMDenseNet(cfg).state_dict(), "step": 1}, plain / "best.pt")
    card = export_run(plain, out, check_audio=song)
    assert "post" not in card and "post" not in card["files"]
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["w.json", "w.onnx", "w.pt"]
    OnnxSeparator(out.with_suffix(".json"))


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


def test_reexport_of_a_card_whose_post_graph_does_not_fit_names_the_file(tmp_path: Path) -> None:
    """A card whose post graph has another layout (here: the mask graph in its place, hash
    updated) is refused by the runtime and by a re-export, naming the file, not with a traceback."""
    from stemcli.modelcard import sha256_file

    run, _ = _wave_run(tmp_path)
    song = _song(tmp_path, 2.0)
    out = tmp_path / "w.onnx"
    export_run(run, out, check_audio=song)
    post = tmp_path / "w.post.onnx"
    post.write_bytes(out.read_bytes())
    card = json.loads(out.with_suffix(".json").read_text())
    card["files"]["post"]["sha256"] = sha256_file(post)
    out.with_suffix(".json").write_text(json.dumps(card))
    msg = r"w\.post\.onnx: the post graph's input has shape \['batch', 2, 'frames', 64\]; .*re-export"
    with pytest.raises(ValueError, match=msg):
        OnnxSeparator(out.with_suffix(".json"))
    with pytest.raises(ExportError, match=msg):
        export_run(out.with_suffix(".json"), tmp_path / "again" / "w.onnx", check_audio=song)
    assert not (tmp_path / "again" / "w.json").exists()
