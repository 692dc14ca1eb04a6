"""MMDenseNet model: shapes, stems summing to the mixture, ONNX export with dynamic axes,
and the separator (onnx and torch backends) on a tiny random-weight model."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from stemcli_mmdense.model import DEFAULT_CONFIG, FrameBranch, MMDenseNet, PerSourceFrame, WaveCorrection, lowpass_fir

from conftest import TINY_MMDENSE as TINY, onnx_and_torch

torch.set_num_threads(1)

# the convolutions on the lower half of the bins, the frame branch over all of them
TINY_FRAME = {**TINY, "max_bin": 128, "conv_bin": 64, "frame": {"hidden": 6}}
TINY_FRAME2 = {**TINY_FRAME, "frame": {"hidden": 6, "layers": 2}}  # stacked LSTM
TINY_FRAME_PS = {**TINY_FRAME, "frame": {"hidden": 6, "per_source": True}}  # one branch per source
# a full-resolution bass path on the lowest 16 bins beside a frame branch
TINY_BASS = {**TINY_FRAME, "bass": {"bins": 16, "channels": 3, "growth": 3, "layers": [1, 2]}}
# the bass branch with a bidirectional LSTM of 4 units at its bottleneck (4 rows of 16 bins)
TINY_BASS_LSTM = {**TINY_FRAME, "bass": {"bins": 16, "channels": 3, "growth": 3, "layers": [1, 1, 2], "lstm": 4}}
# a zero-sum waveform correction between drums and bass at 1/8 of the rate
TINY_WAVE = {**TINY, "wave": {"hidden": 4, "decimate": 8, "layers": 2, "kernel": 3}}
# per-source frame branches seeing and answering the bins above conv_bin in groups of 4
TINY_POOL = {**TINY_BASS, "frame": {"hidden": 6, "per_source": True, "pool": 4}}


def tiny_model(seed: int = 0, config: dict | None = None) -> MMDenseNet:
    torch.manual_seed(seed)
    model = MMDenseNet(config or TINY)
    # random BatchNorm statistics, so the test sees them folded into the exported graph
    for mod in model.modules():
        if isinstance(mod, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
    for mod in model.modules():  # the frame branches' output layers start at zero: make them visible
        if isinstance(mod, FrameBranch):
            torch.nn.init.normal_(mod.out.weight, std=0.5)
    if model.bass is not None:  # likewise
        torch.nn.init.normal_(model.bass.out.weight, std=0.5)
        if model.bass.net.lstm is not None:  # positive biases before its ReLUs: the LSTM's path live
            torch.nn.init.constant_(model.bass.net.lstm.squeeze[1].bias, 1.0)
            torch.nn.init.constant_(model.bass.net.lstm.out[0].bias, 1.0)
    return model.eval()


@pytest.mark.parametrize("length", [1, 300, 4_999, 22_050])
def test_shape_and_sum_to_mixture(length: int) -> None:
    model = tiny_model()
    x = 0.3 * torch.randn(2, 2, length, generator=torch.Generator().manual_seed(length))
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, 4, 2, length)
    assert torch.max(torch.abs(y.sum(1) - x)) < 1e-5


def test_masks_are_a_partition() -> None:
    model = tiny_model()
    mag = torch.rand(1, 2, 37, TINY["max_bin"])
    with torch.no_grad():
        m = model.masks(mag)
    assert m.shape == (1, 4, 2, 37, TINY["max_bin"])
    assert torch.all(m >= 0)
    assert torch.allclose(m.sum(1), torch.ones(1, 2, 37, TINY["max_bin"]), atol=1e-6)


def test_estimates_depend_on_the_input() -> None:
    """Not a constant split: a different mixture gets different masks."""
    model = tiny_model()
    with torch.no_grad():
        a = model.masks(torch.rand(1, 2, 16, 64))
        b = model.masks(10 * torch.rand(1, 2, 16, 64))
    assert torch.max(torch.abs(a - b)) > 1e-3


def test_onnx_export_dynamic_batch_and_time(tmp_path) -> None:
    model = tiny_model()
    path = tmp_path / "tiny.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 2, 3000),), str(path), dynamo=False, opset_version=17,
                          input_names=["mix"], output_names=["stems"],
                          dynamic_axes={"mix": {0: "batch", 2: "time"}, "stems": {0: "batch", 3: "time"}})
    assert not (tmp_path / "tiny.onnx.data").exists()
    shapes = [(1, 2, 3000), (3, 2, 7_777), (2, 2, 100)]
    for shape, (got, want) in zip(shapes, onnx_and_torch(path, model, shapes)):
        assert got.shape == (shape[0], 4, 2, shape[2])
        assert np.max(np.abs(got - want)) < 1e-5


@pytest.mark.parametrize(
    "change",
    [{"max_bin": 60}, {"split_bin": 64}, {"split_bin": 12}, {"n_fft": 1000},
     {"conv_bin": 32},  # bins above the convolutions without a frame branch
     {"conv_bin": 128},  # above max_bin
     {**TINY_FRAME, "conv_bin": 60},  # off the pooling grid
     {**TINY_FRAME, "frame": {"hidden": 5}},
     {**TINY_FRAME, "frame": {"hidden": 6, "layers": 0}},
     {**TINY_BASS, "bass": {"bins": 6}},  # off the bass net's pooling grid
     {**TINY_BASS, "bass": {"bins": 48}},  # above split_bin
     {**TINY_BASS, "bass": {"bins": 16, "lstm": -1}},
     {**TINY_BASS, "bass": {"bins": 16, "lstm": 2.5}},
     {**TINY_BASS, "bass": {"bins": 0, "lstm": 4}},  # an LSTM without the branch
     {**TINY_FRAME, "frame": {"hidden": 6, "pool": 0}},
     {**TINY_FRAME, "frame": {"hidden": 6, "pool": "4"}},
     {**TINY_FRAME, "frame": {"hidden": 6, "pool": 3}},  # 64 bins above conv_bin: not a multiple
     {**TINY_FRAME, "conv_bin": 128, "frame": {"hidden": 6, "pool": 2}},  # no bins above conv_bin
     {**TINY, "wave": {"hidden": -1}},
     {**TINY, "wave": {"hidden": 4, "decimate": 0}},
     {**TINY, "wave": {"hidden": 4, "kernel": 4}},  # even kernel
     {**TINY, "wave": {"hidden": 4, "layers": 1.5}},
     {**TINY, "wave": {"hidden": 4, "pair": ["drums", "drums"]}},
     {**TINY, "wave": {"hidden": 4, "pair": ["drums", "piano"]}},
     {**TINY, "wave": {"hidden": 4, "pair": "drums"}},
     {**TINY, "wave": {"hidden": 4, "pair": ["drums"]}},
     {**TINY, "wave": {"hidden": 4, "pair": ["drums", "bass", "drums"]}},
     {**TINY, "wave": {"hidden": 4, "pair": [["drums"], "bass"]}},  # not a name: a ValueError, not a TypeError
     {**TINY, "wave": {"hidden": True}},
     {**TINY, "wave": {"hiden": 4}},  # a misspelt field would silently leave the branch out
     {**TINY, "wave": 5},
     {**TINY, "wave": {"hidden": 4, "layers": 17}},
     {**TINY, "wave": {"hidden": 4, "groups": 0}},
     {**TINY, "wave": {"hidden": 4, "groups": True, "pair": ["drums", "other", "bass"]}},
     {**TINY, "wave": {"hidden": 4, "mask_loss": -0.5}},
     {**TINY, "wave": {"hidden": 4, "mask_loss": float("inf")}},
     {**TINY, "wave": {"hidden": 4, "mask_loss": "1"}},
     {**TINY, "wave": {"hidden": 4, "mask_loss": True}},
     {**TINY, "wave": {"hidden": 0, "mask_loss": 1.0}},  # a weight for the stems before no correction
     {**TINY, "wave": {"hidden": 4, "groups": 2}},  # two groups, one correction
     {**TINY, "wave": {"hidden": 5, "groups": 2, "pair": ["drums", "other", "bass"]}},  # 5 channels in 2 groups
     {**TINY, "wave": {"hidden": 4, "groups": 2.0, "pair": ["drums", "other", "bass"]}},
     {**TINY, "wave": {"hidden": 4, "chain": 1, "pair": ["drums", "other", "bass"]}},  # not a boolean
     {**TINY, "wave": {"hidden": 4, "chain": "true", "pair": ["drums", "other", "bass"]}}],
)
def test_bad_config(change: dict) -> None:
    with pytest.raises(ValueError):
        MMDenseNet({**TINY, **change})


def test_default_config_is_json_and_sized_for_cpu() -> None:
    import json

    cfg = json.loads(json.dumps(DEFAULT_CONFIG))
    model = MMDenseNet(cfg)
    n = sum(p.numel() for p in model.parameters())
    assert 10_000 < n < 1_000_000
    assert cfg["sources"] == ["vocals", "drums", "bass", "other"]


@pytest.mark.parametrize("tiny", [TINY, TINY_FRAME, TINY_FRAME2, TINY_FRAME_PS, TINY_BASS, TINY_BASS_LSTM, TINY_POOL],
                         ids=["conv", "frame-branch", "frame-branch-2-layers", "frame-branch-per-source", "bass-branch",
                              "bass-lstm", "frame-pool"])
def test_separator_backends_and_api(tmp_path, tiny: dict) -> None:
    """Export a tiny run, then run it as a separator on onnxruntime, on torch and via the API."""
    from stemcli.export import export_run
    from stemcli_mmdense import MMDenseSeparator

    run = tmp_path / "run"
    run.mkdir()
    model = tiny_model(3, tiny)
    cfg = {**DEFAULT_CONFIG, **tiny}
    import json

    (run / "config.json").write_text(json.dumps({"model": cfg, "data": {}, "hyperparameters": {}}))
    torch.save({"model": model.state_dict(), "step": 0}, run / "best.pt")
    export_run(run, tmp_path / "models" / "mmdense.onnx")

    x = (0.2 * np.random.default_rng(5).standard_normal((2, 2, 6_000))).astype(np.float32)
    onnx_sep = MMDenseSeparator(tmp_path / "models" / "mmdense.json", threads=1)
    torch_sep = MMDenseSeparator(tmp_path / "models" / "mmdense.json", backend="torch", threads=1)
    a, b = onnx_sep.separate(x), torch_sep.separate(x)
    assert a.shape == (2, 4, 2, 6_000) and a.dtype == np.float32
    assert np.max(np.abs(a.sum(1) - x)) < 1e-5
    assert np.max(np.abs(a - b)) < 1e-4
    assert onnx_sep.sources == ("vocals", "drums", "bass", "other")

    from stemcli import api

    stems = api.separate(x[0], 44100, model=str(tmp_path / "models" / "mmdense.json"))
    assert set(stems) == set(onnx_sep.sources)
    total = sum(stems.values())
    assert total.shape == x[0].shape
    assert np.max(np.abs(total - x[0])) < 1e-4


def test_default_card_location(tmp_path, monkeypatch) -> None:
    from stemcli.modelcard import ModelFileError
    from stemcli_mmdense import MMDenseSeparator

    monkeypatch.setenv("STEMCLI_MODELS", str(tmp_path))
    with pytest.raises(ModelFileError, match="mmdense.json"):
        MMDenseSeparator()
    with pytest.raises(ValueError, match="backend"):
        MMDenseSeparator(backend="tensorflow")


@pytest.mark.parametrize("lstm", [0, 4])
def test_time_parts_do_not_depend_on_threads(tmp_path, lstm: int) -> None:
    """A long input is cut in grid-aligned time parts by length only: 1 thread, 2 threads in
    parallel parts and 2 intra-op threads give the same stems.  Without an LSTM the receptive
    field fits in the context, so the parts also equal one pass over the whole input."""
    import json

    from stemcli.export import export_run
    from stemcli.runtime import PART_SECONDS, split_points
    from stemcli_mmdense import MMDenseSeparator

    run = tmp_path / "run"
    run.mkdir()
    cfg = {**DEFAULT_CONFIG, **TINY, "full": {**TINY["full"], "lstm": lstm}}
    (run / "config.json").write_text(json.dumps({"model": cfg, "data": {}, "hyperparameters": {}}))
    torch.manual_seed(4)
    torch.save({"model": MMDenseNet(cfg).state_dict(), "step": 0}, run / "best.pt")
    card = export_run(run, tmp_path / "m.onnx")
    assert card["alignment"] == 8 * TINY["hop"]  # stem stride 2 x pool 2 x one 2x2 pooling, in hops
    n = int(1.6 * PART_SECONDS * 44100) + 123
    x = (0.2 * np.random.default_rng(6).standard_normal((1, 2, n))).astype(np.float32)
    assert len(split_points(n, 2, 4 * 44100, card["alignment"])) == 3
    one = MMDenseSeparator(tmp_path / "m.json", threads=1)
    a = one.separate(x)
    b = MMDenseSeparator(tmp_path / "m.json", threads=2).separate(x)
    c = MMDenseSeparator(tmp_path / "m.json", threads=2, parallel="intra").separate(x)
    assert np.max(np.abs(b - a)) < 1e-6 and np.max(np.abs(c - a)) < 1e-6
    assert np.max(np.abs(a.sum(1) - x)) < 1e-5
    if not lstm:
        whole = np.asarray(one._run(x))  # one pass, no parts
        assert np.max(np.abs(whole - a)) < 1e-5


def test_mask_buffer_reuse_keeps_results_apart(monkeypatch) -> None:
    """The shipped model's masks are written into a per-thread buffer reused across calls of the
    same length: the same input twice in a row (the buffer reused), then another length (a new
    buffer), then the first again give the stems of an unbound ``session.run``, bit for bit, and
    the bound path is the one taken (the plain ``run`` is never called)."""
    from stemcli.runtime import OnnxSeparator
    from stemcli.spectral import separate_with_masks

    sep = OnnxSeparator("mmdense", threads=1)
    rng = np.random.default_rng(12)
    xa = (0.1 * rng.standard_normal((1, 2, 3 * 44100))).astype(np.float32)
    xb = (0.1 * rng.standard_normal((1, 2, 2 * 44100 + 777))).astype(np.float32)
    name = sep.session.get_inputs()[0].name

    def plain(x: np.ndarray) -> np.ndarray:
        return separate_with_masks(sep.frontend, lambda mag: tuple(sep.session.run(None, {name: mag})), x, 4)

    if sep.post is not None:  # the shipped model's second graph, on its own session, as the runtime runs it
        from stemcli.modelcard import model_file
        from stemcli.runtime import with_post

        post_file = model_file(sep.card, "post")
        plain = with_post(plain, sep.post, sep.sources, sep.channels, sep._session(post_file, 1), post_file)

    want_a, want_b = plain(xa), plain(xb)

    def unbound(*args, **kwargs):
        raise AssertionError("the mask graph ran unbound")

    monkeypatch.setattr(sep.session, "run", unbound)
    bound_runs = []
    real = sep.session.run_with_iobinding
    monkeypatch.setattr(sep.session, "run_with_iobinding", lambda b: (bound_runs.append(1), real(b))[1])
    for x, want in ((xa, want_a), (xa, want_a), (xb, want_b), (xa, want_a)):
        np.testing.assert_array_equal(sep.separate(x), want)
    assert len(bound_runs) == 4


def test_mask_binding_failure_falls_back_to_a_plain_run(monkeypatch) -> None:
    """A graph whose output cannot be bound (onnxruntime raises) runs unbound, with the same
    stems, and binding is not tried again (it would run the graph twice per part)."""
    from stemcli.runtime import OnnxSeparator

    sep = OnnxSeparator("mmdense", threads=1)
    x = (0.1 * np.random.default_rng(13).standard_normal((1, 2, 44100))).astype(np.float32)
    want = sep.separate(x)
    tries = []

    def refuse(binding):
        tries.append(1)
        raise RuntimeError("bound output shape differs")

    monkeypatch.setattr(sep.session, "run_with_iobinding", refuse)
    np.testing.assert_array_equal(sep.separate(x), want)
    np.testing.assert_array_equal(sep.separate(x), want)
    assert len(tries) == 1


def test_threads_follow_stemcli_threads(monkeypatch) -> None:
    """--jobs workers and MPI ranks set STEMCLI_THREADS; the model must not take every core."""
    from stemcli.runtime import OnnxSeparator

    monkeypatch.setenv("STEMCLI_THREADS", "1")
    one = OnnxSeparator("mmdense")
    assert one.threads == 1 and one.workers == 1
    monkeypatch.setenv("STEMCLI_THREADS", "2")
    assert OnnxSeparator("mmdense").workers == 2
    assert OnnxSeparator("mmdense", threads=1).workers == 1  # an explicit argument wins
    monkeypatch.setenv("STEMCLI_THREADS", "lots")
    with pytest.raises(ValueError, match="STEMCLI_THREADS"):
        OnnxSeparator("mmdense")


@pytest.mark.parametrize("lstm", [0, 4])
def test_lstm_bottleneck_sees_the_whole_input(lstm: int) -> None:
    """With the LSTM branch, a change in the first frames reaches the last frame's masks;
    without it the receptive field is local (about 30 frames for this config)."""
    torch.manual_seed(0)
    model = MMDenseNet({**TINY, "full": {**TINY["full"], "lstm": lstm}}).double().eval()
    mag = torch.rand(1, 2, 96, 64, dtype=torch.float64)
    changed = mag.clone()
    changed[:, :, :4] += 5.0
    with torch.no_grad():
        diff = (model.masks(mag) - model.masks(changed)).abs().amax(dim=(0, 1, 2, 4))  # per frame
    reach = int((diff > 1e-12).nonzero().max())
    assert reach == 95 if lstm else reach < 48
    if lstm:
        assert model.full.net.lstm.rnn.hidden_size == lstm


@pytest.mark.parametrize("tiny", [TINY, TINY_FRAME, TINY_FRAME2, TINY_FRAME_PS, TINY_BASS, TINY_BASS_LSTM, TINY_POOL],
                         ids=["conv", "frame-branch", "frame-branch-2-layers", "frame-branch-per-source", "bass-branch",
                              "bass-lstm", "frame-pool"])
def test_torch_fft_forward_equals_the_exportable_graph(tiny: dict) -> None:
    """forward() (torch.stft/istft, what training runs) equals the one-graph export path."""
    model = tiny_model(3, tiny)
    x = 0.3 * torch.randn(2, 2, 5_555, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        got, want = model(x), model._forward_exportable(x)
    assert got.shape == want.shape == (2, 4, 2, 5_555)
    assert torch.max(torch.abs(got - want)) < 1e-5
    assert torch.max(torch.abs(got.sum(dim=1) - x)) < 1e-5


@pytest.mark.parametrize("tiny", [TINY, TINY_FRAME, TINY_FRAME2, TINY_FRAME_PS, TINY_BASS, TINY_BASS_LSTM, TINY_POOL],
                         ids=["conv", "frame-branch", "frame-branch-2-layers", "frame-branch-per-source", "bass-branch",
                              "bass-lstm", "frame-pool"])
def test_masks_without_full_band_logits_equal_the_softmax_of_the_logits(tiny: dict) -> None:
    """masks_from_log (training's forward and the exported graph) computes the bins above
    conv_bin once for both channels; it must equal the softmax of the full-band logits."""
    model = tiny_model(4, tiny).double()
    logmag = torch.log1p(torch.rand(2, 2, 40, tiny["max_bin"], dtype=torch.float64))
    with torch.no_grad():
        got = model.masks_from_log(logmag)
        want = torch.softmax(model.logits_from_log(logmag).reshape(2, 4, 2, 40, tiny["max_bin"]), dim=1)[:, :3]
        assert got.shape == (2, 3, 2, 40, tiny["max_bin"])
        assert torch.max(torch.abs(got - want)) < 1e-12
        exported = model.mask_net()(logmag)
        if model.conv_bin == model.max_bin:
            assert "split" not in model.frontend()
            assert torch.equal(exported, got)
        else:  # two outputs: below conv_bin, and above it once for both channels
            cb = model.conv_bin
            assert model.frontend()["split"] == cb
            low, high = exported
            assert torch.equal(low, got[..., :cb])
            assert high.shape == (2, 3, 1, 40, tiny["max_bin"] - cb)
            assert torch.equal(high.expand(-1, -1, 2, -1, -1), got[..., cb:])


def test_frame_branch_starts_as_a_no_op() -> None:
    """Its output layer is zero at initialisation: the masks are the convolutions' alone."""
    cfg = {**TINY, "frame": {"hidden": 6}}
    torch.manual_seed(1)
    model = MMDenseNet(cfg).eval()
    mag = torch.rand(1, 2, 40, TINY["max_bin"])
    with torch.no_grad():
        with_branch = model.masks(mag)
        model.frame = None
        without = model.masks(mag)
    assert torch.equal(with_branch, without)


def test_bins_above_conv_bin_come_from_the_frame_branch_alone() -> None:
    """Above ``conv_bin`` the masks are the softmax of the frame branch's logits, and the
    convolutions never see those bins; below, both add up."""
    model = tiny_model(2, TINY_FRAME).double()
    cb, mb = TINY_FRAME["conv_bin"], TINY_FRAME["max_bin"]
    mag = torch.rand(1, 2, 40, mb, dtype=torch.float64)
    with torch.no_grad():
        m = model.masks(mag)
        inp = torch.log1p(mag) * model.in_scale + model.in_bias
        frame = torch.softmax(model.frame(inp), dim=1)  # [B, S, 1, T, F]
        assert torch.allclose(m[..., cb:], frame[..., cb:].expand(-1, -1, 2, -1, -1), atol=1e-12)
        assert torch.max(torch.abs(m[..., :cb] - frame[..., :cb])) > 1e-3  # the convolutions count
    # with the branch's output silenced, the high bins reach nothing: the convolutions ignore them
    high_changed = mag.clone()
    high_changed[..., cb:] *= 3.0
    model.frame.out.weight.data.zero_()
    with torch.no_grad():
        assert torch.equal(model.masks(mag), model.masks(high_changed))
        assert torch.allclose(model.masks(mag)[..., cb:], torch.full_like(m[..., cb:], 0.25), atol=1e-12)


def test_pooled_frame_branch_answers_groups_of_bins() -> None:
    """With ``frame.pool`` 4 the branch sees the bins above conv_bin as the means of groups of
    four (a change that keeps each group's mean changes nothing) and gives one mask per group,
    repeated over its bins; below conv_bin it works at full resolution as before."""
    model = tiny_model(6, TINY_POOL).double()
    cb, mb, p = TINY_POOL["conv_bin"], TINY_POOL["max_bin"], 4
    assert model.frame.branches[0].inp.in_features == 2 * (cb + (mb - cb) // p)
    assert model.frame.branches[0].out.out_features == cb + (mb - cb) // p
    logmag = torch.log1p(torch.rand(1, 2, 40, mb, dtype=torch.float64))
    with torch.no_grad():
        m = model.masks_from_log(logmag)
        groups = m[..., cb:].unflatten(4, (-1, p))
        assert torch.equal(groups, groups[..., :1].expand_as(groups))  # one mask per group
        assert torch.max(torch.abs(m[..., cb:cb + p] - m[..., cb + p:cb + 2 * p])) > 1e-3  # groups differ
        # inside each group: +d on one bin, -d on its neighbour (after the per-bin input scaling)
        d = torch.zeros(mb, dtype=torch.float64)
        d[cb::p], d[cb + 1::p] = 0.3, -0.3
        same_mean = logmag + d / model.in_scale.detach()
        assert torch.allclose(model.masks_from_log(same_mean)[..., cb:], m[..., cb:], atol=1e-12)
        moved = logmag.clone()
        moved[..., cb] += 0.3  # the first group's mean changes
        assert torch.max(torch.abs(model.masks_from_log(moved)[..., cb:] - m[..., cb:])) > 1e-6


def test_per_source_config_errors() -> None:
    with pytest.raises(ValueError, match="frame.per_source must be true or false, got 'yes'"):
        MMDenseNet({**TINY_FRAME, "frame": {"hidden": 6, "per_source": "yes"}})
    with pytest.raises(ValueError, match=r"frame.per_source needs a frame branch \(frame.hidden > 0\)"):
        MMDenseNet({**TINY, "frame": {"hidden": 0, "per_source": True}})


def test_per_source_frame_branches_each_drive_one_source() -> None:
    """``per_source``: one branch per source, each with its own weights; branch ``i`` writes the
    logits of source ``i`` only, and its parameters are a shared branch's with one output."""
    cfg = TINY_FRAME_PS
    model = tiny_model(3, cfg).double()
    assert isinstance(model.frame, PerSourceFrame) and len(model.frame.branches) == 4
    shared = MMDenseNet({**cfg, "frame": {"hidden": 6}}).frame
    one = FrameBranch(2, cfg["max_bin"], 1, 6)
    assert sum(p.numel() for p in model.frame.parameters()) == 4 * sum(p.numel() for p in one.parameters())
    assert sum(p.numel() for p in shared.parameters()) < sum(p.numel() for p in model.frame.parameters())
    inp = torch.rand(2, 2, 40, cfg["max_bin"], dtype=torch.float64)
    with torch.no_grad():
        out = model.frame(inp)
        assert out.shape == (2, 4, 1, 40, cfg["max_bin"])
        for i, branch in enumerate(model.frame.branches):
            assert torch.equal(out[:, i : i + 1], branch(inp))
        model.frame.branches[2].out.weight.zero_()
        out2 = model.frame(inp)
    assert torch.equal(out2[:, 2], torch.zeros_like(out2[:, 2]))
    assert torch.equal(out2[:, [0, 1, 3]], out[:, [0, 1, 3]])
    assert out[:, 2].abs().max() > 1e-3


@pytest.mark.parametrize("layers", [1, 2])
def test_frame_branch_sees_the_whole_input(layers: int) -> None:
    """Without the convolutions' LSTM the receptive field is local; the frame branch's
    bidirectional LSTM (one or stacked layers) carries a change in the first frames to the last
    and back."""
    cfg = {**TINY_FRAME, "full": {**TINY["full"], "lstm": 0}, "frame": {"hidden": 6, "layers": layers}}
    model = tiny_model(0, cfg).double()
    assert model.frame.rnn.num_layers == layers
    h = cfg["frame"]["hidden"] // 2
    with torch.no_grad():  # PyTorch's gate order i, f, g, o: forget gates open (a long memory),
        for name in (f"bias_ih_l{i}{d}" for i in range(layers) for d in ("", "_reverse")):
            b = getattr(model.frame.rnn, name)
            b[h : 2 * h] = 10.0
            b[:h] = -5.0  # input gates almost shut, so 96 frames of input do not saturate the cell
    mag = torch.rand(1, 2, 96, cfg["max_bin"], dtype=torch.float64)
    for edit, probe in ((slice(0, 4), -1), (slice(92, 96), 0)):
        changed = mag.clone()
        changed[:, :, edit] += 5.0
        with torch.no_grad():
            diff = (model.masks(mag) - model.masks(changed)).abs()[:, :, :, probe]
        assert diff.max() > 1e-9
    model.frame.out.weight.data.zero_()
    with torch.no_grad():
        changed = mag.clone()
        changed[:, :, :4] += 5.0
        assert torch.equal(model.masks(mag)[:, :, :, -1], model.masks(changed)[:, :, :, -1])


def test_bass_branch_starts_as_a_no_op_and_acts_only_below_its_bins() -> None:
    """Zero output at initialisation; trained (random) weights change the masks of the lowest
    ``bass.bins`` bins only, at the STFT's own resolution (a one-bin, one-frame change of the
    input moves the branch's logits at that bin and frame)."""
    torch.manual_seed(3)
    model = MMDenseNet(TINY_BASS).eval()
    nb = TINY_BASS["bass"]["bins"]
    mag = torch.rand(1, 2, 40, TINY_BASS["max_bin"])
    with torch.no_grad():
        with_branch = model.masks(mag)
        bass, model.bass = model.bass, None
        without = model.masks(mag)
        assert torch.equal(with_branch, without)
        model.bass = bass
        torch.nn.init.normal_(model.bass.out.weight, std=0.5)
        trained = model.masks(mag)
    assert torch.equal(trained[..., nb:], without[..., nb:])
    assert torch.max(torch.abs(trained[..., :nb] - without[..., :nb])) > 1e-3
    # the branch alone, on the lowest bins: a point change reaches the same point's logits
    inp = torch.log1p(mag[..., :nb]) * model.in_scale[:nb] + model.in_bias[:nb]
    changed = inp.clone()
    changed[:, :, 20, 5] += 2.0
    with torch.no_grad():
        diff = (model.bass(changed) - model.bass(inp)).abs()
    assert diff[:, :, 20, 5].max() > 1e-4


@pytest.mark.parametrize("lstm", [0, 4])
def test_bass_lstm_sees_the_whole_input_below_its_bins(lstm: int) -> None:
    """With ``bass.lstm`` a change in the first frames of the lowest bins reaches the bass
    branch's logits at the last frame; without it the branch's reach is a few frames."""
    cfg = {**TINY_BASS_LSTM, "bass": {**TINY_BASS_LSTM["bass"], "lstm": lstm}}
    model = tiny_model(0, cfg).double()  # the bass output visible, the LSTM's path live
    nb = cfg["bass"]["bins"]
    inp = torch.rand(1, 2, 96, nb, dtype=torch.float64)
    changed = inp.clone()
    changed[:, :, :4] += 2.0
    with torch.no_grad():
        diff = (model.bass(changed) - model.bass(inp)).abs().amax(dim=(0, 1, 3))  # per frame
    reach = int((diff > 1e-12).nonzero().max())
    assert reach == 95 if lstm else reach < 40
    if lstm:
        assert model.bass.net.lstm.rnn.hidden_size == lstm and model.bass.net.lstm.rnn.input_size == nb // 4


def test_exported_mask_graph_sums_the_sources_with_adds(tmp_path) -> None:
    """The softmax denominator is a chain of Adds: onnxruntime's ReduceSum over the source axis
    (not the last) cost 13 of ~215 ms of the shipped graph; the masks are still the softmax's."""
    import onnx
    import onnxruntime as ort

    from stemcli.export import export_model

    model = tiny_model(5, TINY_FRAME_PS)
    path = tmp_path / "masks.onnx"
    export_model(model, path, 2)
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert "ReduceSum" not in ops and "Softmax" not in ops
    logmag = np.log1p(np.random.default_rng(5).random((1, 2, 24, TINY_FRAME_PS["max_bin"]), dtype=np.float32))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    low, high = sess.run(None, {sess.get_inputs()[0].name: logmag})  # below and above conv_bin
    got = np.concatenate([low, np.broadcast_to(high, (*low.shape[:-1], high.shape[-1]))], axis=-1)
    with torch.no_grad():
        logits = model.logits_from_log(torch.from_numpy(logmag)).reshape(1, 4, 2, 24, -1)
    want = torch.softmax(logits, dim=1)[:, :3].numpy()
    assert np.max(np.abs(got - want)) < 1e-5


def test_wave_resampling_keeps_the_low_band_and_removes_the_high() -> None:
    """The decimating low-pass has unit gain at 0 Hz; down then up gives back a 100 Hz tone
    (away from the ends) and nearly nothing of a 5 kHz one, at 1/32 of 44.1 kHz (Nyquist 689 Hz)."""
    fir = lowpass_fir(32)
    assert fir.numel() == 257 and abs(float(fir.sum()) - 1.0) < 1e-6
    wc = WaveCorrection(1, (0, 1), 32, 4, 1, 3).double()
    t = torch.arange(44100, dtype=torch.float64) / 44100
    low, high = torch.sin(2 * torch.pi * 100 * t), torch.sin(2 * torch.pi * 5000 * t)
    x = torch.stack([low, high]).reshape(1, 2, -1)
    down = wc.down(x)
    assert down.shape == (1, 2, -(-44100 // 32))
    back = wc.up(down, 44100)
    assert back.shape == x.shape
    # the polyphase forms equal the plain filters: a stride-D convolution with the taps centred
    # on each kept sample, and a transposed one with D times the taps
    h = fir.double().reshape(1, 1, -1)
    plain_down = torch.nn.functional.conv1d(x.reshape(2, 1, -1), h, stride=32, padding=128).reshape(1, 2, -1)
    assert torch.allclose(down, plain_down, atol=1e-12)
    plain_up = torch.nn.functional.conv_transpose1d(down.reshape(2, 1, -1), 32 * h, stride=32)[..., 128 : 128 + 44100]
    assert torch.allclose(back, plain_up.reshape(1, 2, -1), atol=1e-12)
    mid = slice(2000, -2000)
    assert torch.max(torch.abs(back[0, 0, mid] - low[mid])) < 5e-3  # -46 dB: passband ripple of two passes
    assert torch.max(torch.abs(back[0, 1, mid])) < 2e-3


def test_wave_correction_starts_as_a_no_op_and_moves_low_band_audio_between_the_pair() -> None:
    """With the output layer at zero the model equals the one without the branch; with random
    weights only drums and bass change, by opposite amounts (the stems still sum to the
    mixture), and the change has no energy above the decimated band."""
    torch.manual_seed(0)
    with_wave = MMDenseNet(TINY_WAVE).eval()
    without = MMDenseNet(TINY).eval()
    assert with_wave.wave.inp.in_channels == 3 * 2 and with_wave.wave.out.out_channels == 2  # as before K stems
    missing, unexpected = without.load_state_dict(with_wave.state_dict(), strict=False)
    assert not missing and all(k.startswith("wave.") for k in unexpected)
    wave = torch.randn(2, 2, 6000)
    with torch.no_grad():
        base = without(wave)
        assert torch.equal(with_wave(wave), base)
        torch.nn.init.normal_(with_wave.wave.out.weight, std=0.5)
        torch.nn.init.normal_(with_wave.wave.out.bias, std=0.5)
        out = with_wave(wave)
    d = out - base
    names = list(TINY_WAVE.get("sources", DEFAULT_CONFIG["sources"]))
    i, j = names.index("drums"), names.index("bass")
    assert torch.max(torch.abs(d[:, i])) > 1e-3
    assert torch.allclose(d[:, i], -d[:, j], atol=1e-6)
    others = [k for k in range(len(names)) if k not in (i, j)]
    assert torch.equal(d[:, others], torch.zeros_like(d[:, others]))
    assert torch.allclose(out.sum(dim=1), wave, atol=1e-5)
    spec = torch.fft.rfft(d[:, i, :, 1000:-1000].double(), dim=-1).abs() ** 2
    freqs = torch.fft.rfftfreq(4000, 1 / 44100)
    assert spec[..., freqs > 44100 / 8 / 2 * 1.2].sum() < 1e-4 * spec.sum()


def test_wave_correction_among_three_stems_is_zero_sum_with_one_correction_each() -> None:
    """pair [drums, other, bass]: drums and other each get their own correction, bass loses
    both, vocals are untouched, the stems still sum to the mixture; the output layer holds two
    corrections' channels, the input the mixture and three stems."""
    torch.manual_seed(3)
    cfg = {**TINY_WAVE, "wave": {**TINY_WAVE["wave"], "pair": ["drums", "other", "bass"]}}
    model = MMDenseNet(cfg).eval()
    assert model.wave.inp.in_channels == 4 * 2 and model.wave.out.out_channels == 2 * 2
    assert model.post() == {"type": "wave-pair", "pair": ["drums", "other", "bass"], "decimate": 8}
    wave = torch.randn(1, 2, 5000)
    with torch.no_grad():
        base = model(wave)
        assert torch.equal(base, model.mask_stems(wave))  # a no-op at initialisation
        torch.nn.init.normal_(model.wave.out.weight, std=0.5)
        out = model(wave)
        delta = model.wave.delta(wave, *(base[:, k] for k in (1, 3, 2)))
    d = out - base
    assert torch.equal(d[:, 0], torch.zeros_like(d[:, 0]))
    torch.testing.assert_close(d[:, 1], delta[:, 0:2], atol=1e-6, rtol=0)
    torch.testing.assert_close(d[:, 3], delta[:, 2:4], atol=1e-6, rtol=0)
    torch.testing.assert_close(d[:, 2], -(delta[:, 0:2] + delta[:, 2:4]), atol=1e-6, rtol=0)
    assert torch.max(torch.abs(delta[:, 0:2] - delta[:, 2:4])) > 1e-3  # two different corrections
    torch.testing.assert_close(out.sum(dim=1), wave, atol=1e-5, rtol=0)
    assert model.post_net()(torch.randn(1, 8, 30 + 8, 8)).shape == (1, 4, 30 * 8)


def test_grouped_wave_correction_gives_each_correction_its_own_network() -> None:
    """groups 2 among [drums, other, bass]: after the shared input layer, the drums correction
    depends only on the first half of the channels and the other correction only on the second,
    so changing one group's weights leaves the other correction bit-equal; the group's output
    still goes where an ungrouped one would (drums += c1, other += c2, bass -= c1 + c2)."""
    torch.manual_seed(4)
    cfg = {**TINY_WAVE, "wave": {**TINY_WAVE["wave"], "pair": ["drums", "other", "bass"], "groups": 2}}
    model = MMDenseNet(cfg).eval()
    w = model.wave
    assert w.blocks[0].weight.shape == (4, 2, 3) and w.out.weight.shape == (4, 2, 1)
    assert w.inp.weight.shape == (4, 8, 1)  # shared: each group sees the mixture and all three stems
    for p in w.parameters():
        torch.nn.init.normal_(p, std=0.3)
    wave = torch.randn(1, 2, 4000)
    with torch.no_grad():
        base = model.mask_stems(wave)
        stems = [base[:, k] for k in (1, 3, 2)]
        d0 = w.delta(wave, *stems)
        out = model(wave)
        w.blocks[1].weight[2:] += 0.5  # the second group's dilated block
        w.out.weight[2:] += 0.5  # and its output layer
        d1 = w.delta(wave, *stems)
    assert torch.equal(d0[:, 0:2], d1[:, 0:2])  # the drums correction: untouched
    assert torch.max(torch.abs(d0[:, 2:4] - d1[:, 2:4])) > 1e-3
    torch.testing.assert_close(out[:, 1] - base[:, 1], d0[:, 0:2], atol=1e-6, rtol=0)
    torch.testing.assert_close(out[:, 3] - base[:, 3], d0[:, 2:4], atol=1e-6, rtol=0)
    torch.testing.assert_close(out.sum(dim=1), wave, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=r"wave.groups=2 must divide wave.hidden=4 and the number of corrections, 1"):
        MMDenseNet({**TINY, "wave": {"hidden": 4, "groups": 2}})


def test_wave_chain_applies_a_two_stem_network_per_correction_in_turn() -> None:
    """"chain" among [drums, other, bass]: network 0 is a drums/bass correction that sees only
    the mixture, drums and bass (changing the other stem leaves it bit-equal; with its weights a
    plain drums/bass branch gives the same correction); network 1 corrects other/bass on the bass
    network 0 left (changing network 0 changes it).  On a length that is a multiple of the
    decimation the whole equals the two networks applied one after the other; on any length it
    equals them applied on the zero-padded length and cut (which differs from cutting after each
    network near the end only), the stems sum to the mixture and vocals are untouched; a no-op
    at initialisation.  The card's post entry is the three-stem one; a chain with groups, of two
    stems, without a branch, or with a non-boolean "chain" is refused."""
    from stemcli_mmdense.model import WaveChain

    torch.manual_seed(6)
    cfg = {**TINY_WAVE, "wave": {**TINY_WAVE["wave"], "pair": ["drums", "other", "bass"], "chain": True}}
    model = MMDenseNet(cfg).eval()
    w = model.wave
    assert isinstance(w, WaveChain) and len(w.steps) == 2
    assert [s.pair for s in w.steps] == [(1, 2), (3, 2)]  # (drums, bass), (other, bass) in the source order
    assert all(s.inp.in_channels == 3 * 2 and s.out.out_channels == 2 for s in w.steps)
    assert model.post() == {"type": "wave-pair", "pair": ["drums", "other", "bass"], "decimate": 8}
    wave = torch.randn(1, 2, 4000)  # 500 x 8
    with torch.no_grad():
        assert torch.equal(model(wave), model.mask_stems(wave))  # zero output layers
        for p in w.parameters():
            torch.nn.init.normal_(p, std=0.3)
        base = model.mask_stems(wave)
        out = model(wave)
        in_turn = w.steps[1](wave, w.steps[0](wave, base))
        torch.testing.assert_close(out, in_turn, atol=2e-6, rtol=0)
        assert torch.max(torch.abs(out[:, 2] - w.steps[0](wave, base)[:, 2])) > 1e-3  # bass moved twice
        stems = [base[:, k] for k in (1, 3, 2)]
        d0 = w.delta(wave, *stems)
        d_other = w.delta(wave, stems[0], stems[1] + 0.3, stems[2])
        assert torch.equal(d0[:, 0:2], d_other[:, 0:2])  # network 0 does not see the other stem
        assert torch.max(torch.abs(d0[:, 2:4] - d_other[:, 2:4])) > 1e-3
        w.steps[0].out.weight += 0.5
        d1 = w.delta(wave, *stems)
        assert torch.max(torch.abs(d0[:, 2:4] - d1[:, 2:4])) > 1e-3  # network 1 sees network 0's bass
        odd = torch.randn(2, 2, 4003)  # not a multiple of 8, a batch of 2
        out = model(odd)
        assert torch.equal(out[:, 0], model.mask_stems(odd)[:, 0])
        torch.testing.assert_close(out.sum(dim=1), odd, atol=1e-5, rtol=0)
        # at any length: the networks in turn on the zero-padded length (4008), cut to 4003
        est = torch.randn(2, 4, 2, 4003)
        mix = est.sum(dim=1)
        pad = lambda x: torch.nn.functional.pad(x, (0, 5))  # noqa: E731
        ref = w.steps[1](pad(mix), w.steps[0](pad(mix), pad(est)))[..., :4003]
        got = w(mix, est)
        torch.testing.assert_close(got, ref, atol=2e-6, rtol=0)
        cut = w.steps[1](mix, w.steps[0](mix, est))  # cut after each network instead: differs near the end only
        assert torch.max(torch.abs(got - cut)[..., -256:]) > 1e-4
        torch.testing.assert_close(got[..., :-256], cut[..., :-256], atol=2e-6, rtol=0)
        # the first network computes what a plain drums/bass branch with its weights computes
        plain = MMDenseNet({**TINY_WAVE}).eval()
        plain.wave.load_state_dict(w.steps[0].state_dict())
        torch.testing.assert_close(w.delta(wave, *stems)[:, 0:2], plain.wave.delta(wave, stems[0], stems[2]),
                                   atol=0, rtol=0)
    with pytest.raises(ValueError, match=r"wave.groups must be 1 with it, got 2"):
        MMDenseNet({**TINY, "wave": {"hidden": 4, "groups": 2, "chain": True, "pair": ["drums", "other", "bass"]}})
    with pytest.raises(ValueError, match=r"wave.chain must be true or false, got 'yes'"):
        MMDenseNet({**TINY, "wave": {"hidden": 4, "chain": "yes"}})
    with pytest.raises(ValueError, match=r"wave.chain needs three or more stems in wave.pair"):
        MMDenseNet({**TINY, "wave": {"hidden": 4, "chain": True}})
    with pytest.raises(ValueError, match=r"wave.chain chains the corrections' networks, but there is no correction"):
        MMDenseNet({**TINY, "wave": {"hidden": 0, "chain": True, "pair": ["drums", "other", "bass"]}})


def test_wave_chain_networks_take_their_own_widths() -> None:
    """``"hidden": [6, 2]`` with ``"chain"``: network 0 is 6 channels wide, network 1 is 2 (the
    state dict's shapes say so), the chain still equals its networks in turn and its post graph
    the torch corrections, and the stems sum to the mixture.  A list without ``chain``, of the
    wrong length, or holding a zero, a bool or a non-integer is refused."""
    from stemcli import wavepost

    torch.manual_seed(10)
    trio = ["drums", "other", "bass"]
    model = MMDenseNet({**TINY_WAVE, "wave": {**TINY_WAVE["wave"], "hidden": [6, 2], "pair": trio,
                                              "chain": True}}).eval()
    w = model.wave
    assert [s.inp.out_channels for s in w.steps] == [6, 2]
    assert [s.blocks[0].weight.shape[0] for s in w.steps] == [6, 2]
    sd = model.state_dict()
    assert sd["wave.steps.0.out.weight"].shape == (2, 6, 1) and sd["wave.steps.1.out.weight"].shape == (2, 2, 1)
    for p in w.parameters():
        torch.nn.init.normal_(p, std=0.3)
    est = torch.randn(1, 4, 2, 2400)  # 300 x 8
    mix = est.sum(dim=1)
    with torch.no_grad():
        got = w(mix, est)
        ref = w.steps[1](mix, w.steps[0](mix, est))
        torch.testing.assert_close(got, ref, atol=2e-6, rtol=0)
        torch.testing.assert_close(got.sum(dim=1), mix, atol=1e-5, rtol=0)
        stems = [est[:, k] for k in (1, 3, 2)]
        blocks = torch.from_numpy(wavepost.blocks([mix.numpy(), *(s.numpy() for s in stems)], 8))
        torch.testing.assert_close(model.post_net()(blocks)[..., :2400], w.delta(mix, *stems), atol=2e-6, rtol=0)
    for bad, msg in [({"hidden": [6, 2], "pair": trio}, r"gives each network of a chain its width; it needs "
                      r"wave.chain true"),
                     ({"hidden": [6, 2, 2], "pair": trio, "chain": True}, r"needs one width per network of the "
                      r"chain: 2 for the pair"),
                     ({"hidden": [6, 0], "pair": trio, "chain": True}, r"a list of integers >= 1, got \[6, 0\]"),
                     ({"hidden": [6, True], "pair": trio, "chain": True}, r"a list of integers >= 1"),
                     ({"hidden": [6, 2.0], "pair": trio, "chain": True}, r"a list of integers >= 1"),
                     ({"hidden": [], "pair": trio, "chain": True}, r"a list of integers >= 1, got \[\]")]:
        with pytest.raises(ValueError, match=msg):
            MMDenseNet({**TINY_WAVE, "wave": {**TINY_WAVE["wave"], **bad}})


def test_wave_chain_of_four_stems_updates_the_last_stem_after_each_network() -> None:
    """[vocals, drums, other, bass] in a chain: three networks, each seeing the bass all the
    networks before it left; the whole equals them applied in turn (a length that is a multiple
    of the decimation), bass loses all three corrections, the stems sum to the mixture."""
    torch.manual_seed(8)
    model = MMDenseNet({**TINY_WAVE, "wave": {**TINY_WAVE["wave"], "pair": ["vocals", "drums", "other", "bass"],
                                              "chain": True}}).eval()
    w = model.wave
    assert [s.pair for s in w.steps] == [(0, 2), (1, 2), (3, 2)]
    for p in w.parameters():
        torch.nn.init.normal_(p, std=0.3)
    est = torch.randn(1, 4, 2, 2400)
    mix = est.sum(dim=1)
    with torch.no_grad():
        got = w(mix, est)
        ref = est
        for step in w.steps:
            ref = step(mix, ref)
    torch.testing.assert_close(got, ref, atol=3e-6, rtol=0)
    torch.testing.assert_close(got.sum(dim=1), mix, atol=1e-5, rtol=0)
    assert all(torch.max(torch.abs(got[:, k] - est[:, k])) > 1e-3 for k in range(4))


def test_wave_chain_trains_under_bfloat16_autocast() -> None:
    """Under CPU bfloat16 autocast (``--precision bfloat16``) the chain's resampling stays
    float32: the output is float32, the stems sum to the mixture, and every network's output
    layer gets a finite, non-zero gradient (the first one's also through the second's input)."""
    torch.manual_seed(9)
    model = MMDenseNet({**TINY_WAVE, "wave": {**TINY_WAVE["wave"], "pair": ["drums", "other", "bass"],
                                              "chain": True}})
    wave = torch.randn(1, 2, 3000)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(wave)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.sum(dim=1), wave, atol=1e-5, rtol=0)
    out[:, 1:].square().mean().backward()  # drums, bass, other: each network's output layer moves
    for step in model.wave.steps:
        g = step.out.weight.grad
        assert g is not None and torch.isfinite(g).all() and g.abs().max() > 0


def test_wave_chain_post_graph_computes_the_torch_corrections() -> None:
    """The exported form (:meth:`WaveChain.post_graph`, 2-d convolutions, the blocks the runtime
    makes) gives the corrections torch adds, on a length that is not a multiple of the
    decimation: the chain runs on the padded length in both.  (Both sides run
    :meth:`WaveChain.corrections`: this pins the graph's input layout and 2-d form; the chain's
    arithmetic is pinned by the in-turn tests above.)"""
    from stemcli import wavepost

    torch.manual_seed(7)
    cfg = {**TINY_WAVE, "wave": {**TINY_WAVE["wave"], "pair": ["drums", "other", "bass"], "chain": True}}
    model = MMDenseNet(cfg).eval()
    for p in model.wave.parameters():
        torch.nn.init.normal_(p, std=0.3)
    mix = torch.randn(1, 2, 3001)
    stems = [torch.randn(1, 2, 3001) for _ in range(3)]
    with torch.no_grad():
        want = model.wave.delta(mix, *stems)
        blocks = torch.from_numpy(wavepost.blocks([mix.numpy(), *(s.numpy() for s in stems)], 8))
        got = model.post_net()(blocks)
    assert got.shape == (1, 4, 376 * 8)
    torch.testing.assert_close(got[..., :3001], want, atol=2e-6, rtol=0)


@pytest.mark.parametrize("kernel,layers,groups,k", [(1, 1, 1, 2), (3, 3, 1, 2), (5, 7, 2, 3), (7, 2, 4, 5)])
def test_wave_correction_as_2d_computes_the_same_convolutions(kernel: int, layers: int, groups: int, k: int) -> None:
    """The exported form of the branch's convolutions (``1 x kernel`` 2-d convolutions on ``[B,
    N, 1, L]``, :meth:`WaveCorrection.core` ``as_2d``) is the training form's, bit for bit:
    padding, dilation, groups and biases carried over, a batch of 3, short and long inputs."""
    from stemcli_mmdense.model import WaveCorrection

    torch.manual_seed(kernel + layers)
    wc = WaveCorrection(2, tuple(range(k)), 8, 8, layers, kernel, groups).eval()
    for p in wc.parameters():
        torch.nn.init.normal_(p, std=0.3)
    for t in (1, 37, 300):
        low = torch.randn(3, (k + 1) * 2, t)
        with torch.no_grad():
            assert torch.equal(wc.core(low), wc.core(low, as_2d=True))
    with pytest.raises(ValueError, match=r"groups=2.0 must be an integer dividing hidden=8"):
        WaveCorrection(2, (0, 1, 2), 8, 8, 2, 3, 2.0)


def test_training_estimates_add_the_masks_stems_with_the_mask_loss_weight() -> None:
    """With "mask_loss" W the trainer gets the corrected stems (weight 1) and the masks' own
    stems (weight W), from one forward pass; without it, or without a branch, the output alone."""
    torch.manual_seed(5)
    wave = torch.randn(1, 2, 3000)
    plain = MMDenseNet(TINY_WAVE).eval()
    torch.nn.init.normal_(plain.wave.out.weight, std=0.5)
    with torch.no_grad():
        (only, w), = plain.training_estimates(wave)
        assert w == 1.0 and torch.equal(only, plain(wave))
    both = MMDenseNet({**TINY_WAVE, "wave": {**TINY_WAVE["wave"], "mask_loss": 0.5}}).eval()
    both.load_state_dict(plain.state_dict())  # the same weights: mask_loss adds no parameter
    with torch.no_grad():
        (out, w1), (masks, w2) = both.training_estimates(wave)
        assert (w1, w2) == (1.0, 0.5)
        assert torch.equal(out, both(wave)) and torch.equal(masks, both.mask_stems(wave))
        assert torch.max(torch.abs(out - masks)) > 1e-3  # the correction is there
    assert len(MMDenseNet(TINY).training_estimates(wave)) == 1


def test_wave_correction_keeps_a_non_finite_delta_in_its_pair() -> None:
    """Whatever the branch outputs, the other stems are the mask model's, bit for bit; and a
    model whose sources are not the default pair builds as long as the branch is off."""
    torch.manual_seed(0)
    model = MMDenseNet(TINY_WAVE).eval()
    wave = torch.randn(1, 2, 3000)
    with torch.no_grad():
        base = model(wave)
        torch.nn.init.constant_(model.wave.out.bias, float("inf"))
        out = model(wave)
    assert torch.equal(out[:, [0, 3]], base[:, [0, 3]])
    assert not torch.isfinite(out[:, 1]).all()
    MMDenseNet({**TINY, "sources": ["speaker1", "speaker2"]})
    with pytest.raises(ValueError, match="wave.pair must name two or more different sources"):
        MMDenseNet({**TINY, "sources": ["speaker1", "speaker2"], "wave": {"hidden": 4}})


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the legacy exporter, called directly below
def test_wave_correction_learns_and_exports_as_a_second_graph(tmp_path) -> None:
    """A backward pass reaches the branch (its zero output layer first); export writes the mask
    graph and the post graph (the branch's convolutions), while a one-graph export of the whole
    model is refused rather than written without the branch."""
    from stemcli.export import export_model, post_path

    torch.manual_seed(1)
    model = MMDenseNet(TINY_WAVE)
    wave = torch.randn(1, 2, 4000)
    model(wave)[:, 1].abs().mean().backward()
    assert model.wave.out.weight.grad.abs().max() > 0
    assert model.post() == {"type": "wave-pair", "pair": ["drums", "bass"], "decimate": 8}
    assert MMDenseNet(TINY).post() is None
    with pytest.raises(ValueError, match="no \"wave\" correction, so no post graph"):
        MMDenseNet(TINY).post_net()
    blocks = torch.randn(2, 6, 50 + 8, 8)
    assert model.post_net()(blocks).shape == (2, 2, 50 * 8)
    out = tmp_path / "out" / "m.onnx"
    export_model(model.eval(), out, 2)
    assert out.is_file() and post_path(out) == tmp_path / "out" / "m.post.onnx" and post_path(out).is_file()
    with pytest.raises(ValueError, match="one-graph export has no \"wave\" correction"):
        torch.onnx.export(model, (wave,), str(tmp_path / "whole.onnx"), dynamo=False, opset_version=17)
