"""export_run: ONNX parity checks, the model card, sha256 refusal of tampered files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from stemcli.export import ExportError, export_run, update_metrics
from stemcli.export import main as export_main
from stemcli.modelcard import ModelFileError, load_card, model_file, sha256_file
from stemcli.runtime import OnnxSeparator
from stemcli_mmdense.model import DEFAULT_CONFIG, MMDenseNet

from conftest import TINY_MMDENSE as TINY

torch.set_num_threads(1)



@pytest.fixture()
def run_dir(tmp_path: Path) -> Path:
    """A run folder as the trainer leaves it, with random weights."""
    run = tmp_path / "run"
    run.mkdir()
    cfg = {**DEFAULT_CONFIG, **TINY}
    torch.manual_seed(0)
    model = MMDenseNet(cfg)
    (run / "config.json").write_text(json.dumps({"model": cfg, "data": {"root": "nowhere"},
                                                 "hyperparameters": {"lr": 1e-3}, "commands": ["train ..."]}))
    torch.save({"model": model.state_dict(), "step": 7, "val_sdr": 1.5}, run / "best.pt")
    (run / "log.jsonl").write_text(
        json.dumps({"step": 5, "loss": 0.03, "elapsed": 60.0}) + "\n"
        + json.dumps({"step": 7, "elapsed": 84.0, "val_sdr": {"vocals": 1.0, "mean": 1.5}}) + "\n"
    )
    return run


@pytest.fixture()
def real_audio(tmp_path: Path) -> Path:
    t = np.arange(3 * 44100) / 44100
    x = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.2 * np.sign(np.sin(2 * np.pi * 2 * t)) * (t % 0.5 < 0.01)
    path = tmp_path / "song.wav"
    sf.write(path, np.stack([x, 0.8 * x], axis=1).astype(np.float32), 44100)
    return path


def test_export_writes_verified_card(run_dir: Path, real_audio: Path, tmp_path: Path) -> None:
    out = tmp_path / "models" / "tiny.onnx"
    card = export_run(run_dir, out, check_audio=real_audio, metrics={"speed": {"rtf": 1.0}}, command="stemcli export x")
    assert out.is_file() and out.with_suffix(".pt").is_file() and out.with_suffix(".json").is_file()
    assert not Path(str(out) + ".data").exists()
    assert set(card["export"]["parity_max_abs_diff"]) == {"random", "real"}
    assert max(card["export"]["parity_max_abs_diff"].values()) <= 1e-4
    loaded = load_card(out.with_suffix(".json"))
    assert loaded["files"]["onnx"]["sha256"] == sha256_file(out)
    assert loaded["files"]["torch"]["sha256"] == sha256_file(out.with_suffix(".pt"))
    assert loaded["sources"] == ["vocals", "drums", "bass", "other"]
    assert loaded["training"]["step"] == 7 and loaded["training"]["final_loss"] == 0.03
    assert loaded["command"] == "stemcli export x"
    # a mask model: the graph maps magnitudes to masks, the card names the STFT front end
    assert loaded["frontend"] == {"type": "stft-masks", "n_fft": 256, "hop": 128, "bins": 64, "eps": 1e-10, "residual": True,
                                  "input": "log1p"}
    import onnxruntime as ort

    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["logmag"] and [o.name for o in sess.get_outputs()] == ["masks"]
    # the .pt is a plain state dict
    state = torch.load(out.with_suffix(".pt"), weights_only=True)
    MMDenseNet(loaded["config"]).load_state_dict(state)
    # metrics merge without touching the hashes
    update_metrics(out.with_suffix(".json"), {"sdr": {"vocals": 2.0}})
    again = load_card(out.with_suffix(".json"))
    assert again["metrics"] == {"speed": {"rtf": 1.0}, "sdr": {"vocals": 2.0}}
    assert again["files"] == loaded["files"]


def test_split_card_on_a_one_output_graph_is_refused(run_dir: Path, real_audio: Path, tmp_path: Path) -> None:
    """A card whose front end says ``split`` needs the graph's two outputs (masks, masks_high)."""
    out = tmp_path / "tiny.onnx"
    export_run(run_dir, out, check_audio=real_audio)
    card = json.loads(out.with_suffix(".json").read_text())
    card["frontend"]["split"] = 32
    out.with_suffix(".json").write_text(json.dumps(card))
    with pytest.raises(ValueError, match=r"tiny\.onnx: the graph has 1 output; its card's frontend \(split\) needs 2"):
        OnnxSeparator(out.with_suffix(".json"))
    # and the other way round: a two-output graph whose card lost its split
    two = tmp_path / "two" / "m.onnx"
    export_run(_frame_run(tmp_path), two, check_audio=real_audio)
    card = json.loads(two.with_suffix(".json").read_text())
    assert card["frontend"]["split"] == 32
    OnnxSeparator(two.with_suffix(".json"))  # loads as written
    del card["frontend"]["split"]
    two.with_suffix(".json").write_text(json.dumps(card))
    with pytest.raises(ValueError, match=r"m\.onnx: the graph has 2 outputs; its card's frontend needs 1"):
        OnnxSeparator(two.with_suffix(".json"))


def test_tampered_onnx_is_refused(run_dir: Path, real_audio: Path, tmp_path: Path) -> None:
    out = tmp_path / "tiny.onnx"
    export_run(run_dir, out, check_audio=real_audio)
    OnnxSeparator(out.with_suffix(".json"))  # loads fine before tampering
    data = bytearray(out.read_bytes())
    data[len(data) // 2] ^= 0x01
    out.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match=r"tiny\.onnx: sha256 mismatch"):
        OnnxSeparator(out.with_suffix(".json"))
    # the torch backend checks its own file: still intact, so it loads
    OnnxSeparator(out.with_suffix(".json"), backend="torch")
    pt = out.with_suffix(".pt")
    pt.write_bytes(pt.read_bytes() + b"\0")
    with pytest.raises(ModelFileError, match=r"tiny\.pt: sha256 mismatch"):
        OnnxSeparator(out.with_suffix(".json"), backend="torch")


def test_card_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="not found"):
        load_card(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ModelFileError, match="bad.json"):
        load_card(bad)
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"name": "x"}))
    with pytest.raises(ModelFileError, match="lacks"):
        load_card(partial)
    nohash = tmp_path / "nohash.json"
    (tmp_path / "m.onnx").write_bytes(b"x")
    nohash.write_text(json.dumps({"name": "x", "architecture": "a", "sources": ["a"], "sample_rate": 1,
                                  "channels": 1, "segment": 1, "files": {"onnx": {"path": "m.onnx"}}}))
    with pytest.raises(ModelFileError, match="no sha256"):
        model_file(load_card(nohash), "onnx")


def test_parity_failure_raises_and_leaves_no_card(run_dir: Path, real_audio: Path, tmp_path: Path) -> None:
    out = tmp_path / "strict.onnx"
    with pytest.raises(ExportError, match="differs from torch"):
        export_run(run_dir, out, check_audio=real_audio, tolerance=-1.0)
    assert not out.exists() and not out.with_suffix(".json").exists()


def test_failed_export_leaves_the_existing_model_as_it_was(run_dir: Path, real_audio: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    export_run(run_dir, out, check_audio=real_audio)
    before = {p.name: p.read_bytes() for p in tmp_path.glob("m.*")}
    assert set(before) == {"m.onnx", "m.pt", "m.json"}
    with pytest.raises(ExportError, match=r"m\.onnx: onnxruntime differs from torch"):
        export_run(run_dir, out, check_audio=real_audio, tolerance=-1.0, weights="float16")
    assert {p.name: p.read_bytes() for p in tmp_path.glob("m.*")} == before
    with pytest.raises(ValueError, match="check audio not found"):
        export_run(run_dir, out, check_audio=tmp_path / "missing.wav")
    assert {p.name: p.read_bytes() for p in tmp_path.glob("m.*")} == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no staging left
    OnnxSeparator(out.with_suffix(".json"))  # still loads: hashes match


def test_not_a_run(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="config.json"):
        export_run(tmp_path, tmp_path / "x.onnx")


def test_command_line_names_the_cli_as_users_type_it() -> None:
    from stemcli.modelcard import command_line

    main = "/x/.venv/lib/python3.11/site-packages/stemcli/__main__.py"
    assert command_line([main, "export", "runs/a b", "-o", "m.onnx"]) == "stemcli export 'runs/a b' -o m.onnx"
    assert command_line(["/x/.venv/bin/stemcli", "train", "mmdense"]) == "stemcli train mmdense"
    assert command_line(["/x/stemcli/train/loop.py", "umx"]) == "python -m stemcli.train.loop umx"
    assert command_line(["/x/stemcli/export.py", "runs/a", "-o", "m.onnx"]) == "python -m stemcli.export runs/a -o m.onnx"


def test_session_options_flush_denormals_and_set_threads() -> None:
    from stemcli.runtime import session_options

    opts = session_options(2)
    assert opts.get_session_config_entry("session.set_denormal_as_zero") == "1"
    assert opts.intra_op_num_threads == 2 and opts.inter_op_num_threads == 1
    assert session_options().intra_op_num_threads == 0  # onnxruntime's own choice


def _frame_run(tmp_path: Path) -> Path:
    """A run whose frame branch has matrices large enough to be stored as float16."""
    run = tmp_path / "frame_run"
    run.mkdir()
    cfg = {**DEFAULT_CONFIG, **TINY, "frame": {"hidden": 16}, "conv_bin": 32, "split_bin": 16,
           "high": {"growth": 4, "layers": [1, 1], "pool": [1, 1]}, "full": {"growth": 4, "layers": [1, 1], "pool": [1, 1]}}
    torch.manual_seed(1)
    model = MMDenseNet(cfg)
    torch.nn.init.normal_(model.frame.out.weight, std=0.5)  # it starts at zero: make the branch count
    (run / "config.json").write_text(json.dumps({"model": cfg, "data": {"root": "nowhere"}}))
    torch.save({"model": model.state_dict(), "step": 3}, run / "best.pt")
    return run


def test_float16_weights_halve_the_matrices_and_keep_parity(tmp_path: Path, real_audio: Path) -> None:
    import onnx
    from click.testing import CliRunner

    from stemcli.cli import cli

    run = _frame_run(tmp_path)
    full = export_run(run, tmp_path / "f32" / "m.onnx", check_audio=real_audio)
    res = CliRunner().invoke(cli, ["export", str(run), "-o", str(tmp_path / "f16" / "m.onnx"),
                                   "--check-audio", str(real_audio), "--weights", "float16"])
    assert res.exit_code == 0, res.output
    card = load_card(tmp_path / "f16" / "m.json")
    stored = card["export"]["weights"]
    assert full["export"]["weights"] == {"dtype": "float32"} and stored["dtype"] == "float16"
    # the frame branch's input and output matrices (2 x 64 x 16 and 16 x 4 x 64) went to float16
    assert stored["onnx_float16"]["values"] >= 2 * 64 * 16 + 16 * 4 * 64
    saved = full["files"]["onnx"]["bytes"] - card["files"]["onnx"]["bytes"]
    assert saved >= 2 * stored["onnx_float16"]["values"] - 4096  # 2 bytes per value, less the Cast nodes
    graph = onnx.load(str(tmp_path / "f16" / "m.onnx")).graph
    halves = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT16}
    assert len(halves) == stored["onnx_float16"]["tensors"]
    assert sum(n.op_type == "Cast" and n.input[0] in halves for n in graph.node) == len(halves)
    assert max(card["export"]["parity_max_abs_diff"].values()) <= 1e-4
    state = torch.load(tmp_path / "f16" / "m.pt", weights_only=True)
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    # both backends run the rounded weights: they agree, and differ (slightly) from float32
    x = sf.read(real_audio, dtype="float32", always_2d=True)[0].T[None]
    on16 = OnnxSeparator(tmp_path / "f16" / "m.json").separate(x)
    th16 = OnnxSeparator(tmp_path / "f16" / "m.json", backend="torch").separate(x)
    on32 = OnnxSeparator(tmp_path / "f32" / "m.json").separate(x)
    assert np.abs(on16 - th16).max() <= 1e-4
    assert 0 < np.abs(on16 - on32).max() < 1e-2


def test_float16_rounding_refuses_weights_beyond_its_range(run_dir: Path, tmp_path: Path) -> None:
    from stemcli.export import round_weights_to_float16

    model = MMDenseNet({**DEFAULT_CONFIG, **TINY})
    assert round_weights_to_float16(model) > 0
    assert round_weights_to_float16(model) == 0  # idempotent: already float16 values
    with torch.no_grad():
        model.in_scale[3] = 1e5
    with pytest.raises(ExportError, match=r"in_scale: weights beyond float16's range"):
        round_weights_to_float16(model)
    with torch.no_grad():  # an inf elsewhere in the tensor does not hide the overflow
        model.in_scale[4] = float("inf")
    with pytest.raises(ExportError, match=r"in_scale: weights beyond float16's range"):
        round_weights_to_float16(model)
    with pytest.raises(ValueError, match="weights must be one of float32, float16"):
        export_run(run_dir, tmp_path / "x.onnx", weights="bfloat16")


def test_float16_storage_converts_only_exact_tensors(run_dir: Path, real_audio: Path, tmp_path: Path) -> None:
    import shutil

    import onnxruntime as ort

    from stemcli.export import store_initializers_float16

    out = tmp_path / "m.onnx"
    export_run(run_dir, out, check_audio=real_audio)  # float32 weights, not rounded
    copy = tmp_path / "copy.onnx"
    shutil.copy(out, copy)
    stats = store_initializers_float16(copy, min_elements=1)
    # random weights are not float16 values and stay; zero-initialised ones (the bass output) are
    assert stats["kept_float32"] > 0 and stats["tensors"] > 0
    x = np.random.default_rng(0).random((1, 2, 40, 64)).astype(np.float32)
    # run again on the rewritten file: nothing new converts, and the new names never collide
    again = store_initializers_float16(copy, min_elements=1)
    assert again["tensors"] == 0 and again["kept_float32"] == stats["kept_float32"]
    a, b = (ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (out, copy))
    name = a.get_inputs()[0].name
    assert np.array_equal(a.run(None, {name: x})[0], b.run(None, {name: x})[0])


def test_float16_storage_picks_names_that_do_not_collide(tmp_path: Path) -> None:
    """An initializer already named like the float16 copy of another one gets a fresh name."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from stemcli.export import store_initializers_float16

    w = numpy_helper.from_array(np.array([0.5, 2.0, -1.0], np.float32), "W")
    w2 = numpy_helper.from_array(np.array([0.25, 4.0, 3.0], np.float32), "W__float16")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "W"], ["y0"]), helper.make_node("Mul", ["y0", "W__float16"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])], [w, w2])
    path = tmp_path / "c.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    x = np.array([1.0, 2.0, 3.0], np.float32)
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert store_initializers_float16(path, min_elements=1)["tensors"] == 2
    names = [i.name for i in onnx.load(str(path)).graph.initializer]
    assert len(names) == len(set(names)) == 2
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.array_equal(got, want)


def test_reexport_from_a_card_keeps_weights_and_training_record(run_dir: Path, real_audio: Path, tmp_path: Path) -> None:
    """``stemcli export CARD`` rebuilds the model from a shipped card and its .pt: the same
    weights (stems equal to the first export's), the training record and SDR carried over,
    speed dropped (graph-dependent), the source named; in place only with --force."""
    from click.testing import CliRunner

    from stemcli.cli import cli

    models = tmp_path / "models"
    first = export_run(run_dir, models / "m.onnx", check_audio=real_audio, weights="float16",
                       metrics={"speed": {"rtf": 9.0}, "sdr": {"vocals": 2.0}}, segment=12.0, context=0.5)
    x = sf.read(real_audio, dtype="float32", always_2d=True)[0].T[None]
    before = OnnxSeparator(models / "m.json").separate(x)
    res = CliRunner().invoke(cli, ["export", str(models / "m.json"), "-o", str(models / "m.onnx"),
                                   "--check-audio", str(real_audio), "--weights", "float16"])
    assert res.exit_code != 0 and "exists (use --force" in res.output
    res = CliRunner().invoke(cli, ["export", str(models / "m.json"), "-o", str(models / "m.onnx"),
                                   "--check-audio", str(real_audio), "--weights", "float16", "--force"])
    assert res.exit_code == 0, res.output
    card = load_card(models / "m.json")
    assert card["metrics"] == {"sdr": {"vocals": 2.0}}
    assert (card["segment"], card["context"]) == (12.0, 0.5)
    assert card["export"]["weights"]["rounded_values"] == first["export"]["weights"]["rounded_values"] > 0
    reexport = card["training"].pop("reexport")
    assert reexport["card"] == str(models / "m.json") and reexport["onnx_sha256"] == first["sha256"]
    assert reexport["exported"] == first["export"]["date"] and reexport["previous"] is None
    assert set(reexport["max_abs_diff_to_previous"]) == {"random", "real"}
    assert max(reexport["max_abs_diff_to_previous"].values()) <= 1e-6
    assert card["training"] == first["training"]
    assert card["training"]["step"] == 7 and card["training"]["final_loss"] == 0.03
    assert max(card["export"]["parity_max_abs_diff"].values()) <= 1e-4
    after = OnnxSeparator(models / "m.json").separate(x)
    assert np.abs(after - before).max() <= 1e-6
    # the card's segment and context from the command line: set when given, kept when not (above)
    res = CliRunner().invoke(cli, ["export", str(models / "m.json"), "-o", str(models / "m.onnx"),
                                   "--context", "0.37", "--segment", "20", "--force"])
    assert res.exit_code == 0, res.output
    assert (load_card(models / "m.json")["segment"], load_card(models / "m.json")["context"]) == (20.0, 0.37)
    for bad in (["--context", "-1"], ["--segment", "0"]):
        res = CliRunner().invoke(cli, ["export", str(models / "m.json"), "-o", str(tmp_path / "x.onnx"), *bad])
        assert res.exit_code == 2 and "Invalid value for '" + bad[0] + "'" in res.output
        assert not (tmp_path / "x.onnx").exists()
    # the same refusals from the library and its module entry point (no Click in front of them)
    for kwargs, match in (({"context": -1.0}, "context must be >= 0"), ({"segment": 0.0}, "segment must be > 0"),
                          ({"context": float("nan")}, "context must be >= 0")):
        with pytest.raises(ValueError, match=match):
            export_run(models / "m.json", tmp_path / "x.onnx", **kwargs)
        assert not (tmp_path / "x.onnx").exists()
    with pytest.raises(SystemExit, match="error: context must be >= 0 seconds, got -0.5"):
        export_main([str(models / "m.json"), "-o", str(tmp_path / "x.onnx"), "--context", "-0.5"])
    assert not (tmp_path / "x.onnx").exists()
    # a second re-export chains the record, and keeps the card's float16 storage by default
    again = export_run(models / "m.json", tmp_path / "b" / "m.onnx", check_audio=real_audio)
    assert again["training"]["reexport"]["previous"]["onnx_sha256"] == first["sha256"]
    assert again["export"]["weights"]["dtype"] == "float16"
    assert again["files"]["torch"]["bytes"] == card["files"]["torch"]["bytes"]
    # not a card, or a card whose weights were changed: refused, naming the file
    other = tmp_path / "notes.txt"
    other.write_text("x")
    with pytest.raises(ValueError, match=r"notes\.txt: not a training run folder or a model card"):
        export_run(other, tmp_path / "c" / "m.onnx")
    pt = models / "m.pt"
    pt.write_bytes(pt.read_bytes() + b"\0")
    with pytest.raises(ModelFileError, match=r"m\.pt: sha256 mismatch"):
        export_run(models / "m.json", tmp_path / "d" / "m.onnx")


def test_reexport_of_a_one_output_graph_gives_the_split_graph(tmp_path: Path, real_audio: Path, monkeypatch) -> None:
    """A card written before the split front end (one output, masks expanded over the channels in
    the graph) re-exports to the two-output graph with the same stems; weights that no longer
    match the source graph are refused (its SDR would not hold)."""
    import onnxruntime as ort

    run = _frame_run(tmp_path)
    with monkeypatch.context() as m:  # the exporter as it was: no split
        m.setattr(MMDenseNet, "_split", property(lambda self: False))
        old = export_run(run, tmp_path / "old" / "m.onnx", check_audio=real_audio)
    assert "split" not in old["frontend"]
    new = export_run(tmp_path / "old" / "m.json", tmp_path / "new" / "m.onnx", check_audio=real_audio)
    assert new["frontend"]["split"] == 32
    sess = ort.InferenceSession(str(tmp_path / "new" / "m.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["masks", "masks_high"]
    assert max(new["training"]["reexport"]["max_abs_diff_to_previous"].values()) <= 1e-6
    x = sf.read(real_audio, dtype="float32", always_2d=True)[0].T[None]
    a = OnnxSeparator(tmp_path / "old" / "m.json").separate(x)
    b = OnnxSeparator(tmp_path / "new" / "m.json").separate(x)
    assert np.abs(a - b).max() <= 1e-6
    # other weights under the old card (its hash updated): torch and the new graph agree, the old graph does not
    state = torch.load(tmp_path / "old" / "m.pt", weights_only=True)
    state["frame.out.weight"] = state["frame.out.weight"] * 3.0
    torch.save(state, tmp_path / "old" / "m.pt")
    card = json.loads((tmp_path / "old" / "m.json").read_text())
    card["files"]["torch"]["sha256"] = sha256_file(tmp_path / "old" / "m.pt")
    (tmp_path / "old" / "m.json").write_text(json.dumps(card))
    with pytest.raises(ExportError, match=r"m\.onnx: its stems differ from .*old/m\.onnx's by .* the card's SDR would not hold"):
        export_run(tmp_path / "old" / "m.json", tmp_path / "newer" / "m.onnx", check_audio=real_audio)
    assert not (tmp_path / "newer" / "m.onnx").exists() and not (tmp_path / "newer" / "m.json").exists()


# benchmarks/arch_cost.py: a config's graphs timed before training


TINY_COST = {**TINY, "max_bin": 128, "conv_bin": 64, "frame": {"hidden": 6},
             "wave": {"hidden": 4, "decimate": 8, "layers": 2, "kernel": 3}}


def test_arch_cost_builds_exports_and_times_each_config(tmp_path: Path, capsys) -> None:
    """Variants merge into the reference config key by key (not into the defaults, not replacing
    nested objects); each is built, exported and timed; ratios are to the reference's times; the
    parameters are the built model's; the timed part is the model's separation (the torch model's
    stems, to the export tolerance); a config without a post graph has no post timing."""
    from conftest import load_script

    ac = load_script("benchmarks/arch_cost.py")
    ref = tmp_path / "tiny.json"
    ref.write_text(json.dumps(TINY_COST))
    variants = ['wide={"frame": {"hidden": 12}}', 'w8={"wave": {"hidden": 8}}', 'nowave={"wave": {"hidden": 0}}']
    configs = ac.build_configs("mmdense", ref, variants)
    assert list(configs) == ["tiny", "wide", "w8", "nowave"]
    assert configs["w8"]["wave"] == {**configs["tiny"]["wave"], "hidden": 8}
    assert configs["w8"]["wave"]["decimate"] == 8 != DEFAULT_CONFIG["wave"]["decimate"]  # the reference's, kept
    assert configs["wide"]["low"] == configs["tiny"]["low"] == {**DEFAULT_CONFIG["low"], **TINY_COST["low"]}

    cand = ac.Candidate("w8", configs["w8"], tmp_path, 0.5, 1, False)
    torch.manual_seed(0)
    model = MMDenseNet({**DEFAULT_CONFIG, **configs["w8"]}).eval()
    with torch.no_grad():
        want = model(torch.from_numpy(cand.mix)).numpy()
    assert cand.mix.shape == (1, 2, 22050)
    np.testing.assert_allclose(cand.timed["part"](), want, atol=1e-4)

    out = tmp_path / "cost.json"
    argv = ["--config", str(ref), *[x for v in variants for x in ("--variant", v)], "--seconds", "0.5",
            "--rounds", "2", "--train-step", "--json", str(out)]
    assert ac.main(argv) == 0
    payload = json.loads(out.read_text())
    res = payload["results"]
    assert "'wide={\"frame\": {\"hidden\": 12}}'" in payload["command"]  # quoted: it can be retyped
    for name, cfg in configs.items():
        torch.manual_seed(0)
        assert res[name]["parameters"] == sum(p.numel() for p in MMDenseNet({**DEFAULT_CONFIG, **cfg}).parameters())
    assert res["wide"]["parameters"] > res["tiny"]["parameters"] > res["nowave"]["parameters"]
    for key in ("graph", "post", "part", "step"):
        assert len(res["tiny"][key]["seconds"]) == 2
        assert res["tiny"][key]["ratio"] == pytest.approx(1.0)
        assert res["wide"][key]["ratio"] == pytest.approx(res["wide"][key]["ms"] / res["tiny"][key]["ms"])
    assert "post" not in res["nowave"] and set(res["nowave"]) == {"parameters", "graph", "part", "step"}
    assert "w8" in capsys.readouterr().out


def test_arch_cost_prints_a_timing_the_reference_lacks(tmp_path: Path, capsys) -> None:
    """A variant with a post graph beside a reference without one: its post time is printed and
    recorded, its ratio is not (there is nothing to divide by)."""
    from conftest import load_script

    ac = load_script("benchmarks/arch_cost.py")
    ref = tmp_path / "plain.json"
    ref.write_text(json.dumps({**TINY_COST, "wave": {"hidden": 0}}))
    out = tmp_path / "cost.json"
    assert ac.main(["--config", str(ref), "--variant", 'w={"wave": {"hidden": 4}}', "--seconds", "0.5",
                    "--rounds", "1", "--json", str(out)]) == 0
    res = json.loads(out.read_text())["results"]
    assert "post" not in res["plain"] and res["w"]["post"]["ratio"] is None and res["w"]["post"]["ms"] > 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("w "))
    assert f"{res['w']['post']['ms']:.1f}      -" in row


@pytest.mark.parametrize("variant, message", [
    ("small", "expected NAME=JSON"),
    ("=1", "expected NAME=JSON"),
    ('small={"conv_bin": ', "small: not valid JSON"),
    ("small=[1, 2]", "small: the overrides must be a JSON object, got list"),
    ('../x={"hop": 64}', "a NAME holds letters, digits and _ . + - only"),
    ('tiny={"hop": 64}', "tiny: the name is already taken"),
])
def test_arch_cost_refuses_a_bad_variant(tmp_path: Path, capsys, variant: str, message: str) -> None:
    from conftest import load_script

    ac = load_script("benchmarks/arch_cost.py")
    ref = tmp_path / "tiny.json"
    ref.write_text(json.dumps(TINY_COST))
    assert ac.main(["--config", str(ref), "--variant", variant, "--rounds", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --variant") and message in err[0]


def test_arch_cost_names_a_config_that_cannot_be_built(tmp_path: Path, capsys) -> None:
    from conftest import load_script

    ac = load_script("benchmarks/arch_cost.py")
    ref = tmp_path / "tiny.json"
    ref.write_text(json.dumps(TINY_COST))
    assert ac.main(["--config", str(ref), "--variant", 'bad={"split_bin": 128}', "--rounds", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: config bad: cannot build or export it") and "split_bin" in err[0]
