"""Export a training run to ONNX, check it against torch, and write the model card.

``export_run(run_dir, "models/NAME.onnx")``:

1. rebuilds the architecture from ``run_dir/config.json`` and loads ``best.pt`` (the best
   validation SDR; ``checkpoint.pt`` if there is no ``best.pt``), with ``weights_only=True``;
2. exports one self-contained ONNX file (legacy TorchScript exporter, opset 17, no external
   data file): for a model with a ``frontend()`` (a mask model, see :mod:`stemcli.spectral`)
   its ``mask_net()``, input ``mag`` or ``logmag [batch, channels, frames, bins]`` (as the
   front end's ``input`` says), output
   ``masks [batch, M, channels, frames, bins]`` (or, with the front end's ``split``, ``masks``
   and ``masks_high``: :func:`stemcli.spectral.graph_outputs`) with dynamic ``batch`` and
   ``frames`` axes, the card recording the front end; otherwise the whole model, input ``mix [batch, channels,
   time]``, output ``stems [batch, sources, channels, time]``, dynamic ``batch`` and ``time``;
   a model with a ``post()`` entry (``stemcli_mmdense``'s ``"wave"`` correction) also gets a
   second graph, ``NAME.post.onnx``, run after the inverse STFT (:mod:`stemcli.wavepost`),
   which the card lists as ``files.post`` (sha256 checked like the first) and ``post``;
3. runs onnxruntime (through the front end and the post graph, if any) and torch on random audio and on real audio (``check_audio``, else an
   excerpt of the run's validation data) and raises :class:`ExportError` if the largest absolute
   difference exceeds ``tolerance`` (1e-4);
4. (steps 2-3 work on hidden staging files next to ``NAME.onnx``: a failure leaves an existing
   model there, its ``.pt`` and its card as they were) writes ``NAME.pt`` (the ``state_dict``
   only), moves the checked file(s) to ``NAME.onnx`` (and ``NAME.post.onnx``; one left by an
   earlier model of that name without a post graph is removed) and writes the card ``NAME.json`` with the
   sha256 of every file, the training data card, steps and time, validation SDR, optional measured
   metrics and the exact command.

``weights="float16"`` halves the files: the weights are first rounded to the nearest float16
value (in torch, which stays float32), then every ONNX initializer of at least 1024 values that
holds such values exactly (the linear, LSTM and transposed-convolution weights; not the
convolutions the exporter fuses with their BatchNorm) is stored as float16 behind a ``Cast`` to
float32, and ``NAME.pt`` keeps float16 tensors (``load_state_dict`` casts them back).  The
computation stays float32: onnxruntime folds the casts when the session is created, and the
parity check compares the rounded torch model with the file it wrote, so the usual tolerance
holds.  What rounding costs in SDR is measured, not assumed (export/README.md).

``export_run(card, ...)`` with a model card (``models/NAME.json``) in place of a run folder
re-exports a shipped model with this exporter: the card's ``config``, the weights of its
``.pt`` (sha256 checked), its weight storage (float16 or float32), its training record and its
measured SDR carry over; its speed, which depends on the graph, does not.  Besides the parity
check against torch, the new graph's stems are compared with the source card's graph's on the
same inputs (``training.reexport.max_abs_diff_to_previous``; above the tolerance the export
fails: the SDR measured on the old graph would not hold), and ``training.reexport`` names the
card, graph hash and date it came from.  (The
run folder of a shipped model is not in the repository; when the exporter improves, the
shipped model can still get the better graph.)
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np

from stemcli.modelcard import CARD_FORMAT, POST_SUFFIX, command_line, post_path, save_card, sha256_file

OPSET = 17
TOLERANCE = 1e-4
WEIGHT_DTYPES = ("float32", "float16")
FP16_MIN_ELEMENTS = 1024  # smaller initializers stay float32 (not worth a Cast node)


class ExportError(RuntimeError):
    """The exported model does not reproduce the torch model (or cannot be exported)."""


def load_run(run_dir: Path) -> tuple[dict[str, Any], Any, dict[str, Any]]:
    """A training run's config, its torch model (``best.pt``, else ``checkpoint.pt`` and its
    weight average if it has one; eval mode) and where the weights came from.

    Raises:
        ValueError: naming ``run_dir``: no ``config.json``, or no weights.
    """
    import torch

    from stemcli.train import archs

    cfg_path = run_dir / "config.json"
    if not cfg_path.is_file():
        raise ValueError(f"{run_dir}: not a training run (no config.json)")
    run_cfg = json.loads(cfg_path.read_text())
    for name in ("best.pt", "checkpoint.pt"):
        f = run_dir / name
        if f.is_file():
            break
    else:
        raise ValueError(f"{run_dir}: no best.pt or checkpoint.pt to export")
    ck = torch.load(f, map_location="cpu", weights_only=True)
    model = archs.build(run_cfg["model"])
    averaged = name == "checkpoint.pt" and "ema" in ck  # a --ema run stopped before it validated
    model.load_state_dict(ck["ema"]["model"] if averaged else ck["model"])
    model.eval()
    info = {"weights": f"{name} (weight average)" if averaged else name, "step": int(ck.get("step", 0))}
    if "val_sdr" in ck:
        info["best_val_sdr_mean"] = float(ck["val_sdr"])
    return run_cfg, model, info


def _load_card_source(card_path: Path) -> tuple[dict[str, Any], Any, dict[str, Any]]:
    """A model card as export source: ``(run config, model, card)``; the run config rebuilt
    from the card's ``config`` and ``training`` record, the weights its ``.pt`` (sha256 checked)."""
    import torch

    from stemcli.modelcard import load_card, model_file
    from stemcli.train import archs

    card = load_card(card_path)
    if not isinstance(card.get("config"), dict):
        raise ValueError(f"{card_path}: the card has no architecture config to rebuild the model from")
    pt = model_file(card, "torch")
    try:
        model = archs.build(card["config"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{card_path}: cannot build the card's architecture ({_one_line(exc)})") from exc
    try:
        state = torch.load(pt, map_location="cpu", weights_only=True)
        model.load_state_dict(state)  # float16 files are cast back to the float32 parameters
    except (RuntimeError, OSError, ValueError) as exc:
        raise ValueError(f"{pt}: cannot load these weights into the card's architecture ({_one_line(exc)})") from exc
    model.eval()
    training = card.get("training") or {}
    run_cfg = {"model": card["config"], "data": training.get("data", {}),
               "hyperparameters": training.get("hyperparameters", {}), "commands": training.get("commands", [])}
    if "data_history" in training:
        run_cfg["data_history"] = training["data_history"]
    return run_cfg, model, card


def _one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's message on one line (torch's load_state_dict errors span many), cut at ``limit``."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _training_summary(run_dir: Path, weights_step: int | None = None) -> dict[str, Any]:
    """Last loss, last validation SDR per stem and total time, from ``log.jsonl``; with
    ``weights_step``, also the validation SDR of the exported weights (``weights_val_sdr``)."""
    out: dict[str, Any] = {}
    log = run_dir / "log.jsonl"
    if not log.is_file():
        return out
    best_mean = -np.inf
    for line in log.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "loss" in rec:
            out["final_loss"] = rec["loss"]
        if "val_sdr" in rec:
            out["last_val_sdr"] = rec["val_sdr"]
            out["last_val_step"] = rec["step"]
            if rec["step"] == weights_step:
                out["weights_val_sdr"] = rec["val_sdr"]
            if rec["val_sdr"].get("mean", -np.inf) > best_mean:
                best_mean = rec["val_sdr"]["mean"]
                out["best_val_sdr"] = rec["val_sdr"]
                out["best_val_step"] = rec["step"]
        if "elapsed" in rec:
            out["minutes"] = round(rec["elapsed"] / 60.0, 2)
            out["steps"] = rec["step"]
    return out


def _real_audio(run_cfg: dict[str, Any], check_audio: Path | None, channels: int, seconds: float = 8.0) -> np.ndarray | None:
    import soundfile as sf

    rate = int(run_cfg["model"]["sample_rate"])
    if check_audio is None:
        root = Path(run_cfg.get("data", {}).get("root", ""))
        for split in ("valid", "test", "train"):
            mixes = sorted((root / split).glob("*/mixture.wav")) if root.is_dir() else []
            if mixes:
                check_audio = mixes[0]
                break
        else:
            return None
    check_audio = Path(check_audio)
    if not check_audio.is_file():
        raise ValueError(f"{check_audio}: check audio not found")
    try:
        data, sr = sf.read(str(check_audio), frames=int(seconds * rate), dtype="float32", always_2d=True)
    except RuntimeError as exc:
        raise ValueError(f"{check_audio}: cannot read audio ({exc})") from exc
    if sr != rate:
        raise ValueError(f"{check_audio}: {sr} Hz, the model needs {rate} Hz")
    x = data.T
    if x.shape[0] != channels:
        x = np.repeat(x.mean(0, keepdims=True), channels, axis=0)
    return np.ascontiguousarray(x[None])


def _frontend(model: Any) -> dict[str, Any] | None:
    from stemcli.spectral import check_frontend

    return check_frontend(model.frontend(), type(model).__name__) if callable(getattr(model, "frontend", None)) else None


def _post(model: Any) -> dict[str, Any] | None:
    """A model's checked ``post`` entry (:mod:`stemcli.wavepost`), or None."""
    from stemcli.wavepost import check_post

    post = model.post() if callable(getattr(model, "post", None)) else None
    return None if post is None else check_post(post, model.config["sources"], type(model).__name__)


def _alignment(model: Any, mcfg: dict[str, Any], post: dict[str, Any] | None) -> int:
    """Samples by which an input may shift without changing the model's grids: the STFT hop x
    the network's time stride, and with a post graph also its decimation (the least common
    multiple), so that time parts start on the whole input's grids."""
    import math

    align = int(getattr(model, "multiple", 1)) * int(mcfg.get("hop", 1))
    return math.lcm(align, int(post["decimate"])) if post else align


def graph_runner(onnx_path: Path, frontend: dict[str, Any] | None, sources: list[str],
                 post: tuple[dict[str, Any], Path, int] | None = None) -> Any:
    """``mix [batch, channels, time] -> stems [batch, sources, channels, time]`` with the graph
    at ``onnx_path`` on onnxruntime, through ``frontend`` (a checked card entry) if given, then
    the post graph (a checked ``post`` entry, its file, the channels) if given; the whole input at once (no
    chunking), as the parity check compares it with torch."""
    import onnxruntime as ort

    from stemcli.runtime import session_options, with_post
    from stemcli.spectral import graph_outputs, separate_with_masks

    sess = ort.InferenceSession(str(onnx_path), session_options(), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    n_sources = len(sources)
    if frontend is None:
        def base(x: np.ndarray) -> np.ndarray:
            return np.array(sess.run(None, {name: x})[0], np.float32)
    else:
        out_names = list(graph_outputs(frontend, n_sources))

        def base(x: np.ndarray) -> np.ndarray:
            return separate_with_masks(frontend, lambda mag: tuple(sess.run(out_names, {name: mag})), x, n_sources)
    if post is None:
        return base
    entry, post_file, channels = post
    try:
        post_sess = ort.InferenceSession(str(post_file), session_options(), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ExportError(f"{post_file}: onnxruntime cannot load this post graph ({_one_line(exc)})") from exc
    return with_post(base, entry, sources, channels, post_sess, post_file, error=ExportError)


def check_parity(model: Any, onnx_path: Path, inputs: dict[str, np.ndarray], tolerance: float = TOLERANCE,
                 stems: dict[str, np.ndarray] | None = None) -> dict[str, float]:
    """Largest |onnxruntime - torch| of the stems per named input (``mix [batch, channels,
    time]``); raise :class:`ExportError` above ``tolerance``.  A model with a post graph is run
    with the one at :func:`post_path` of ``onnx_path``.  ``stems``, if given, receives
    onnxruntime's stems per input (a re-export compares them with the previous graph's)."""
    import torch

    sources = list(model.config["sources"])
    post = _post(model)
    run = graph_runner(onnx_path, _frontend(model), sources,
                       None if post is None else (post, post_path(onnx_path), int(model.config["channels"])))
    diffs = {}
    for label, x in inputs.items():
        with torch.inference_mode():
            ref = model(torch.from_numpy(x)).numpy()
        got = run(x)
        if stems is not None:
            stems[label] = got
        if got.shape != ref.shape:
            raise ExportError(f"{onnx_path}: output shape {got.shape} on {label} audio, torch gives {ref.shape}")
        diffs[label] = float(np.max(np.abs(got - ref)))
        if not diffs[label] <= tolerance:
            raise ExportError(
                f"{onnx_path}: onnxruntime differs from torch by {diffs[label]:.3g} on {label} audio "
                f"(tolerance {tolerance:g}); not writing a card"
            )
    return diffs


def _compare_with_card(card: dict[str, Any], onnx_path: Path, new_stems: dict[str, np.ndarray],
                       inputs: dict[str, np.ndarray], tolerance: float) -> dict[str, float]:
    """Largest |new - previous| of the stems per input: ``new_stems`` (the graph at
    ``onnx_path``, from :func:`check_parity`) against the graph of ``card`` (sha256 checked)
    through the card's own front end; raise :class:`ExportError` above ``tolerance``."""
    from stemcli.modelcard import model_file
    from stemcli.spectral import check_frontend

    from stemcli.wavepost import check_post

    previous_path = model_file(card, "onnx")
    old = check_frontend(card["frontend"], str(previous_path)) if card.get("frontend") else None
    old_post = None
    if card.get("post") is not None:
        old_post = (check_post(card["post"], card["sources"], str(previous_path)), model_file(card, "post"),
                    int(card["channels"]))
    previous = graph_runner(previous_path, old, list(card["sources"]), old_post)
    diffs = {}
    for label, x in inputs.items():
        diffs[label] = float(np.max(np.abs(new_stems[label] - previous(x))))
        if not diffs[label] <= tolerance:
            raise ExportError(f"{onnx_path}: its stems differ from {previous_path}'s by {diffs[label]:.3g} on "
                              f"{label} audio (tolerance {tolerance:g}); the card's SDR would not hold")
    return diffs


def round_weights_to_float16(model: Any) -> int:
    """Round every floating tensor of ``model``'s state dict (its weights and BatchNorm
    statistics; not the fixed non-persistent buffers such as the STFT's) to the nearest float16
    value, in place (the tensors stay float32).  Returns how many values changed.

    Raises:
        ExportError: a value is beyond float16's range (|x| > 65504).
    """
    import torch

    changed = 0
    with torch.no_grad():
        for name, t in model.state_dict().items():  # shares storage with the model
            if not t.is_floating_point():
                continue
            half = t.to(torch.float16)
            if bool((torch.isinf(half) & torch.isfinite(t)).any()):
                raise ExportError(f"{name}: weights beyond float16's range (max |w| {t.abs().max().item():.3g} > 65504)")
            rounded = half.to(t.dtype)
            changed += int((rounded != t).sum())
            t.copy_(rounded)
    return changed


def store_initializers_float16(onnx_path: Path, min_elements: int = FP16_MIN_ELEMENTS) -> dict[str, int]:
    """Rewrite ``onnx_path`` with every float32 initializer of at least ``min_elements`` values
    that float16 holds exactly stored as float16, followed by a ``Cast`` back to float32 under
    the original name (lossless by construction: an inexact tensor is left as it is).

    Returns ``{"tensors": converted, "values": their elements, "kept_float32": inexact ones}``.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(onnx_path))
    graph = model.graph
    inputs = {i.name for i in graph.input}
    taken = ({i.name for i in graph.initializer} | inputs | {o.name for o in graph.output}
             | {n for node in graph.node for n in (*node.input, *node.output, node.name)})

    def fresh(name: str) -> str:
        out, k = name, 1
        while out in taken:
            out, k = f"{name}{k}", k + 1
        taken.add(out)
        return out

    keep, casts = [], []
    stats = {"tensors": 0, "values": 0, "kept_float32": 0}
    for init in graph.initializer:
        if init.data_type != TensorProto.FLOAT or init.name in inputs:
            keep.append(init)
            continue
        w = numpy_helper.to_array(init)
        if w.size < min_elements:
            keep.append(init)
            continue
        half = w.astype(np.float16)
        if not np.array_equal(half.astype(np.float32), w, equal_nan=True):
            stats["kept_float32"] += 1
            keep.append(init)
            continue
        stored = fresh(init.name + "__float16")
        keep.append(numpy_helper.from_array(half, stored))
        casts.append(helper.make_node("Cast", [stored], [init.name], to=TensorProto.FLOAT,
                                      name=fresh(init.name + "__cast")))
        stats["tensors"] += 1
        stats["values"] += int(w.size)
    if not casts:
        return stats
    del graph.initializer[:]
    graph.initializer.extend(keep)
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # onnx.checker.ValidationError is not a ValueError
        raise ExportError(f"{onnx_path}: the float16 rewrite is not a valid ONNX model ({exc})") from exc
    tmp = onnx_path.with_name(onnx_path.stem + ".partial.onnx")
    onnx.save(model, str(tmp))
    os.replace(tmp, onnx_path)
    return stats


def _onnx_export(net: Any, example: Any, path: Path, names: list[str], axes: dict[str, dict[int, str]]) -> None:
    """``torch.onnx.export`` of ``net`` to one self-contained file at ``path`` (written under a
    temporary name first).

    Raises:
        ExportError: the exporter failed or wrote external data.
    """
    import warnings

    import torch

    tmp = path.with_name(path.stem + ".partial.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                net, (example,), str(tmp), dynamo=False, opset_version=OPSET,
                input_names=names[:1], output_names=names[1:], dynamic_axes=axes,
            )
        except Exception as exc:
            tmp.unlink(missing_ok=True)
            raise ExportError(f"{path}: torch.onnx.export failed: {exc}") from exc
    side = tmp.with_name(tmp.name + ".data")
    if side.exists():
        side.unlink()
        tmp.unlink(missing_ok=True)
        raise ExportError(f"{path}: exporter wrote external data; model too large for one file")
    os.replace(tmp, path)


def export_model(model: Any, onnx_path: Path, channels: int) -> None:
    """Export ``model`` (eval mode) to one ONNX file: its ``mask_net()`` if it has a front end
    (dynamic batch and frame axes), else the whole waveform model (dynamic batch and time).  A
    model with a ``post()`` entry also gets its ``post_net()`` at :func:`post_path` (input
    ``blocks [batch, (K + 1) * channels, frames + 8, decimate]``, output ``delta [batch, (K - 1) *
    channels, frames * decimate]`` for the ``K`` stems of its ``pair``, dynamic batch and frames:
    :mod:`stemcli.wavepost`)."""
    import torch

    frontend = _frontend(model)  # a model that cannot be exported refuses here, before any file
    post = _post(model)
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    if frontend is None:
        net, example = model, torch.zeros(1, channels, 44100)
        names, axes = ["mix", "stems"], {"mix": {0: "batch", 2: "time"}, "stems": {0: "batch", 3: "time"}}
    else:
        net, example = model.mask_net().eval(), torch.rand(1, channels, 64, frontend["bins"])
        from stemcli.spectral import graph_input, graph_outputs

        inp = graph_input(frontend)[0]
        outs = list(graph_outputs(frontend, len(model.config["sources"])))  # masks (, masks_high)
        names, axes = [inp, *outs], {inp: {0: "batch", 2: "frames"}, **{o: {0: "batch", 3: "frames"} for o in outs}}
    _onnx_export(net, example, onnx_path, names, axes)
    if post is not None:
        try:
            example = torch.randn(1, (len(post["pair"]) + 1) * channels, 100 + 8, post["decimate"])
            _onnx_export(model.post_net().eval(), example, post_path(onnx_path), ["blocks", "delta"],
                         {"blocks": {0: "batch", 2: "frames"}, "delta": {0: "batch", 2: "samples"}})
        except BaseException:
            onnx_path.unlink(missing_ok=True)
            raise


def export_run(
    run_dir: str | Path,
    out_onnx: str | Path,
    check_audio: str | Path | None = None,
    segment: float | None = None,
    context: float | None = None,
    metrics: dict[str, Any] | None = None,
    command: str | None = None,
    tolerance: float = TOLERANCE,
    seed: int = 0,
    weights: str | None = None,
) -> dict[str, Any]:
    """Export the run in ``run_dir`` to ``out_onnx`` (+ ``.pt`` and ``.json`` next to it).

    Args:
        run_dir: training run folder (``config.json``, ``best.pt`` / ``checkpoint.pt``, ``log.jsonl``),
            or a model card ``.json`` to re-export (see the module docstring).
        out_onnx: path of the ONNX file to write; the card and state dict take its stem.
        check_audio: a real recording for the parity check (default: the run's validation data).
        segment: preferred chunk length (s) written to the card (default 30, or the source card's).
        context: neighbouring audio (s) the engine should add on each side of a chunk (default
            1, or the source card's).
        metrics: measured numbers to record (e.g. ``{"sdr": {...}, "speed": {...}}``; default:
            none, or the source card's without ``speed``).
        command: the command to record (default: this process's ``sys.argv``).
        tolerance: largest allowed |onnxruntime - torch|.
        seed: seed of the random parity input.
        weights: ``"float32"``, or ``"float16"`` to round the weights to float16 and store them
            so (files about half the size; see the module docstring); default float32, or the
            source card's.

    Returns:
        The card (also written to ``out_onnx.with_suffix(".json")``).

    Raises:
        ValueError: not a run folder or card, unreadable check audio, ``segment`` <= 0 or
            ``context`` < 0 (or not finite).
        ExportError: export failed, onnxruntime disagrees with torch beyond ``tolerance``, or
            (re-export) the new graph's stems differ from the source card's graph's beyond it.
    """
    import onnx
    import onnxruntime
    import torch

    run_dir, out_onnx = Path(run_dir), Path(out_onnx)
    if out_onnx.suffix != ".onnx":
        raise ValueError(f"{out_onnx}: the output must end in .onnx")
    if out_onnx.name.endswith(POST_SUFFIX):
        raise ValueError(f"{out_onnx}: a name ending in {POST_SUFFIX} is taken by the post graph of another model")
    if weights is not None and weights not in WEIGHT_DTYPES:
        raise ValueError(f"weights must be one of {', '.join(WEIGHT_DTYPES)}, got {weights!r}")
    source_card, info = None, {}
    if run_dir.is_file() and run_dir.suffix == ".json":
        run_cfg, model, source_card = _load_card_source(run_dir)
        source_weights = ((source_card.get("export") or {}).get("weights") or {})
        if weights is None:
            weights = source_weights.get("dtype", "float32")
        if metrics is None:
            metrics = {k: v for k, v in (source_card.get("metrics") or {}).items() if k != "speed"}
    elif run_dir.is_file():
        raise ValueError(f"{run_dir}: not a training run folder or a model card (.json)")
    else:
        run_cfg, model, info = load_run(run_dir)
    weights = weights or "float32"
    if segment is None:
        segment = float(source_card.get("segment", 30.0)) if source_card else 30.0
    if context is None:
        context = float(source_card.get("context", 1.0)) if source_card else 1.0
    if not (np.isfinite(segment) and segment > 0):
        raise ValueError(f"segment must be > 0 seconds, got {segment}")
    if not (np.isfinite(context) and context >= 0):
        raise ValueError(f"context must be >= 0 seconds, got {context}")
    mcfg = run_cfg["model"]
    channels = int(mcfg["channels"])
    rng = np.random.default_rng(seed)
    inputs = {"random": (0.3 * rng.standard_normal((2, channels, 123_457))).astype(np.float32)}
    real = _real_audio(run_cfg, Path(check_audio) if check_audio else None, channels)
    if real is not None:
        inputs["real"] = real

    stored: dict[str, Any] = {"dtype": weights}
    if weights == "float16":
        stored["rounded_values"] = round_weights_to_float16(model)
        if source_card is not None and source_weights.get("dtype") == "float16":
            stored["rounded_values"] = source_weights.get("rounded_values")  # rounded at the first export
    # everything is built and checked under a staging name first: a failure leaves an existing
    # model at out_onnx (and its .pt and card) as it was
    staging = out_onnx.with_name(f".{out_onnx.stem}.staging.onnx")
    post = _post(model)
    try:
        export_model(model, staging, channels)
        if weights == "float16":
            stored["onnx_float16"] = store_initializers_float16(staging)
            if post is not None:
                stored["post_float16"] = store_initializers_float16(post_path(staging))
        new_stems: dict[str, np.ndarray] = {}
        diffs = check_parity(model, staging, inputs, tolerance, stems=new_stems)
        if source_card is not None:  # the carried-over SDR was measured on the source's graph
            to_previous = _compare_with_card(source_card, staging, new_stems, inputs, tolerance)
    except ExportError as exc:
        staging.unlink(missing_ok=True)
        post_path(staging).unlink(missing_ok=True)
        raise ExportError(str(exc).replace(str(post_path(staging)), str(post_path(out_onnx)))
                          .replace(str(staging), str(out_onnx))) from exc
    except BaseException:
        staging.unlink(missing_ok=True)
        post_path(staging).unlink(missing_ok=True)
        raise

    pt_path = out_onnx.with_suffix(".pt")
    tmp = pt_path.with_name(pt_path.name + ".partial")
    state = model.state_dict()
    if weights == "float16":  # exact: the values were rounded above
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    try:
        torch.save(state, tmp)
        os.replace(tmp, pt_path)
        if post is not None:
            os.replace(post_path(staging), post_path(out_onnx))
        os.replace(staging, out_onnx)
    finally:  # nothing staged is left behind, whatever stopped the moves
        for f in (tmp, post_path(staging), staging):
            f.unlink(missing_ok=True)

    frontend = _frontend(model)
    if frontend is None:
        io = {"input": "mix [batch, channels, time] float32", "output": "stems [batch, sources, channels, time] float32"}
    else:
        m = "sources - 1" if frontend["residual"] else "sources"
        from stemcli.spectral import graph_input

        feature = graph_input(frontend)[1]
        io = {"input": f"{feature} [batch, channels, frames, bins] float32",
              "output": f"masks [batch, {m}, channels, frames, bins] float32"}
        if "split" in frontend:
            k = frontend["split"]
            io["output"] = (f"masks [batch, {m}, channels, frames, {k}] float32 (bins below {k}), "
                            f"masks_high [batch, {m}, 1, frames, bins - {k}] float32 (above, every channel)")
    if post is not None:
        pair, d = post["pair"], post["decimate"]
        if len(pair) == 2:
            first, second = pair
            io["post"] = (f"blocks [batch, 3 x channels, frames + 8, {d}] float32 (mixture, {first}, {second}, zero-padded "
                          f"by {4 * d} samples before, in blocks of {d}) -> delta [batch, channels, frames x {d}] float32 "
                          f"(added to {first}, subtracted from {second})")
        else:
            k = len(pair)
            io["post"] = (f"blocks [batch, {k + 1} x channels, frames + 8, {d}] float32 (mixture, {', '.join(pair)}, "
                          f"zero-padded by {4 * d} samples before, in blocks of {d}) -> delta [batch, {k - 1} x channels, "
                          f"frames x {d}] float32 (corrections added to {', '.join(pair[:-1])} in that order, all "
                          f"subtracted from {pair[-1]})")
    if source_card is not None:  # the same weights: their training record carries over
        training = {k: v for k, v in (source_card.get("training") or {}).items() if k != "reexport"}
        training["reexport"] = {"card": str(run_dir), "onnx_sha256": source_card.get("sha256"),
                                "exported": (source_card.get("export") or {}).get("date"),
                                "max_abs_diff_to_previous": to_previous,
                                "previous": (source_card.get("training") or {}).get("reexport")}
    else:
        training = {"run": str(run_dir), "data": run_cfg.get("data", {}),
                    **({"data_history": run_cfg["data_history"]} if "data_history" in run_cfg else {}),
                    "hyperparameters": run_cfg.get("hyperparameters", {}),
                    "commands": run_cfg.get("commands", []), **info, **_training_summary(run_dir, info.get("step"))}
    card = {
        "format": CARD_FORMAT,
        "name": out_onnx.stem,
        "architecture": mcfg["architecture"],
        "sources": list(mcfg["sources"]),
        "sample_rate": int(mcfg["sample_rate"]),
        "channels": channels,
        "segment": float(segment),
        "context": float(context),
        "alignment": _alignment(model, mcfg, post),
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "sha256": sha256_file(out_onnx),
        "files": {
            "onnx": {"path": out_onnx.name, "sha256": sha256_file(out_onnx), "bytes": out_onnx.stat().st_size},
            "torch": {"path": pt_path.name, "sha256": sha256_file(pt_path), "bytes": pt_path.stat().st_size},
            **({"post": {"path": post_path(out_onnx).name, "sha256": sha256_file(post_path(out_onnx)),
                         "bytes": post_path(out_onnx).stat().st_size}} if post else {}),
        },
        "io": io,
        **({"frontend": frontend} if frontend else {}),
        **({"post": post} if post else {}),
        "config": mcfg,
        "training": training,
        "metrics": metrics or {},
        "export": {
            "opset": OPSET, "parity_max_abs_diff": diffs, "tolerance": tolerance, "weights": stored,
            "torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
            "python": platform.python_version(), "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        },
        "command": command or command_line(),
    }
    save_card(card, out_onnx.with_suffix(".json"))
    if post is None:  # a post graph of the model this one replaces is no longer listed anywhere
        post_path(out_onnx).unlink(missing_ok=True)
    return card


def update_metrics(card_path: str | Path, metrics: dict[str, Any]) -> dict[str, Any]:
    """Merge measured ``metrics`` (SDR tables, speed) into an existing card; hashes untouched."""
    from stemcli.modelcard import load_card

    card = load_card(card_path)
    card.setdefault("metrics", {}).update(metrics)
    save_card(card, card_path)
    return card


def main(argv: list[str] | None = None) -> None:
    import argparse

    p = argparse.ArgumentParser(prog="python -m stemcli.export", description=__doc__.split("\n")[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("-o", "--output", required=True, type=Path)
    p.add_argument("--check-audio", type=Path)
    p.add_argument("--segment", type=float, default=None)
    p.add_argument("--context", type=float, default=None)
    p.add_argument("--weights", choices=WEIGHT_DTYPES, default=None, help="default: float32, or the source card's")
    a = p.parse_args(argv)
    try:
        command = command_line(None if argv is None else ["export.py", *argv])
        card = export_run(a.run_dir, a.output, a.check_audio, segment=a.segment, context=a.context, command=command,
                          weights=a.weights)
    except (ValueError, ExportError) as exc:
        sys.exit(f"error: {exc}")
    print(json.dumps({"onnx": str(a.output), "parity": card["export"]["parity_max_abs_diff"],
                      "bytes": card["files"]["onnx"]["bytes"]}))


if __name__ == "__main__":
    main()
