"""Run an exported model on onnxruntime (default) or torch, behind the Separator interface.

:class:`OnnxSeparator` runs any model exported by :func:`stemcli.export.export_run`, given its
card (``-m path/to/card.json``, or a name found in :func:`stemcli.modelcard.models_dir`).
Before loading, the model file's sha256 is checked against the card; a changed file is
refused with a message naming it.

* ``backend="onnx"``: ``onnxruntime.InferenceSession`` on the card's ``.onnx`` file (a
  waveform-to-stems graph, or, when the card has a ``frontend``, a magnitudes-to-masks graph
  run between the FFT-based STFT and inverse STFT of :mod:`stemcli.spectral`; with a ``post``
  entry, a second graph corrects two or more stems after the inverse, :mod:`stemcli.wavepost`).  An input
  longer than ``PART_SECONDS`` is cut in time parts of at most that length (each with
  ``context`` seconds of real neighbouring audio, joined by a short linear cross-fade); the
  cut depends on the input length only, never on the thread count, so the stems are the same
  with 1 thread, N threads or N MPI ranks, even for a model whose receptive field spans its
  whole input (an LSTM).  With ``threads=N > 1`` the parts run concurrently on ``N``
  single-threaded sessions: many ops of a spectrogram graph run on one thread inside
  onnxruntime, so splitting the work in time scales better than intra-op threads.
  ``parallel="intra"`` runs the parts one after the other on one session with ``N`` intra-op
  threads instead.
* ``backend="torch"``: the architecture rebuilt from the card's ``config`` and the shipped
  ``state_dict`` (``.pt``, loaded with ``weights_only=True``), for comparison and debugging.

onnxruntime and torch are imported only when a separator is constructed.
"""

from __future__ import annotations

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from stemcli.modelcard import find_card, load_card, model_file
from stemcli.plugins import Separator

BACKENDS = ("onnx", "torch")
PARALLEL = ("time", "intra")
MIN_PART_SECONDS = 4.0  # below this a part is not worth a worker of its own
PART_SECONDS = 16.0  # longest time part: a 30 s chunk with 2 x 1 s context runs as 2 parts
FADE_SECONDS = 0.05
CONTEXT_OVERLAP = 0.01  # default chunk overlap of a model with context (0.3 s of a 30 s segment)


def session_options(intra: int | None = None) -> Any:
    """The onnxruntime session options stemcli runs models with (export's parity check too).

    ``intra`` intra-op threads (``None``: onnxruntime's choice); one inter-op thread; denormals
    flushed to zero (``session.set_denormal_as_zero``: about 7 % faster on the shipped model,
    whose ReLU activations decay into the denormal range; a flushed value is below 1.2e-38).
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if intra:
        opts.intra_op_num_threads = int(intra)
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.set_denormal_as_zero", "1")
    return opts


def split_points(total: int, parts: int, min_part: int, align: int = 1) -> list[int]:
    """Boundaries ``[0, b1, ..., total]`` of at most ``parts`` near-equal parts >= ``min_part``,
    inner boundaries on multiples of ``align`` (STFT hop x the network's time stride: every
    part then sees the same frame and pooling grid as the whole input)."""
    n = max(1, min(parts, total // max(1, min_part)))
    inner = sorted({align * round(i * total / n / align) for i in range(1, n)} - {0, total})
    return [0, *[b for b in inner if 0 < b < total], total]


def run_in_parts(run: Any, mix: np.ndarray, bounds: list[int], context: int, fade: int,
                 pool: ThreadPoolExecutor | None) -> np.ndarray:
    """Run ``run`` on time parts of ``mix`` (each with ``context`` samples of neighbouring audio)
    and join them with linear cross-fades of ``fade`` samples centred on the boundaries.

    The output is allocated once every part is done, when the parts' temporaries are freed
    (copying each part into it from its worker as it finishes was tried: a 3-minute song from
    disk took 2.68 s against 2.64 s, within the noise, and a 60-minute one peaked at 979 MiB
    instead of 877).

    Args:
        run: maps ``[batch, channels, time]`` to ``[batch, sources, channels, time]``.
        mix: [shape=(batch, channels, time)].
        bounds: part boundaries from :func:`split_points`.
        context: extra samples on each side of a part (>= fade / 2).

    Returns:
        [shape=(batch, sources, channels, time)] float32; a convex combination of the parts' estimates,
        so stems that sum to the mixture in every part still do.

    Raises:
        ValueError: if the parts come back with different leading shapes, or one not as long
            as its input.
    """
    total = mix.shape[-1]
    half = fade // 2
    spans = [(max(0, a - context), min(total, b + context)) for a, b in zip(bounds[:-1], bounds[1:])]
    jobs = [lambda lo=lo, hi=hi: run(np.ascontiguousarray(mix[..., lo:hi])) for lo, hi in spans]
    outs = list(pool.map(lambda f: f(), jobs)) if pool is not None else [f() for f in jobs]
    for y, (lo, hi) in zip(outs, spans):
        if y.shape[:-1] != outs[0].shape[:-1] or y.shape[-1] != hi - lo:
            raise ValueError(f"time parts returned shapes {outs[0].shape[:-1]} + (time,) and {y.shape} "
                             f"(for a part {hi - lo} samples long)")
    out = np.empty(outs[0].shape[:-1] + (total,), np.float32)
    for i, ((a, b), (lo, _), y) in enumerate(zip(zip(bounds[:-1], bounds[1:]), spans, outs)):
        start = a + half if i > 0 else a
        stop = b - half if i < len(outs) - 1 else b
        out[..., start:stop] = y[..., start - lo : stop - lo]
    ramp = (np.arange(2 * half, dtype=np.float32) + 0.5) / (2 * half)
    for i in range(1, len(outs)):
        b = bounds[i]
        lo_prev, lo_next = spans[i - 1][0], spans[i][0]
        prev = outs[i - 1][..., b - half - lo_prev : b + half - lo_prev]
        nxt = outs[i][..., b - half - lo_next : b + half - lo_next]
        out[..., b - half : b + half] = (1.0 - ramp) * prev + ramp * nxt
    return out


def with_post(base: Any, post: dict[str, Any], sources: Any, channels: int, session: Any, path: Path,
              error: type[Exception] = ValueError) -> Any:
    """``base`` (``mix [batch, channels, time] -> stems``) followed by the post graph in
    ``session``, read from ``path`` (:mod:`stemcli.wavepost`; ``post`` a checked card entry): the
    runtime's and the export parity check's.

    Raises:
        ``error`` naming ``path``: the graph does not fit the card (now), or fails when run.
    """
    import onnxruntime as ort

    from stemcli.wavepost import apply_post, check_graph

    try:
        in_name = check_graph(session, channels, post["decimate"], path, len(post["pair"]))
    except ValueError as exc:
        raise error(str(exc)) from exc
    errors = (RuntimeError, ValueError, ort.capi.onnxruntime_pybind11_state.Fail,
              ort.capi.onnxruntime_pybind11_state.InvalidArgument,
              ort.capi.onnxruntime_pybind11_state.RuntimeException)

    def graph(blocks: np.ndarray) -> np.ndarray:
        return session.run(None, {in_name: blocks})[0]

    def run(mix: np.ndarray) -> np.ndarray:
        est = np.asarray(base(mix), np.float32)  # a fresh array from the front end: corrected in place
        try:
            return apply_post(post, graph, mix, est if est.flags.writeable else est.copy(), sources)
        except errors as exc:
            raise error(f"{path}: {exc}") from exc

    return run


class OnnxSeparator(Separator):
    """A separator backed by an exported model and its card.

    Args:
        model: card path (``.json``), model path (``.onnx``, its card next to it), a model name
            in the models folder, or ``None`` for ``default_model``.
        backend: ``"onnx"`` (onnxruntime) or ``"torch"``.
        threads: CPU threads (default: ``$STEMCLI_THREADS`` if set, e.g. by ``--jobs`` workers or
            MPI ranks, else all cores).
        parallel: ``"time"`` (default): ``threads`` single-threaded onnxruntime sessions on
            time parts of long inputs; ``"intra"``: one session with ``threads`` intra-op threads.
    """

    description = "Any stemcli-exported model, given its card (-m path/to/card.json)"
    default_model = "mmdense"

    def __init__(self, model: str | Path | None = None, backend: str = "onnx", threads: int | None = None,
                 parallel: str = "time") -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend '{backend}' (choose from {', '.join(BACKENDS)})")
        if parallel not in PARALLEL:
            raise ValueError(f"unknown parallel mode '{parallel}' (choose from {', '.join(PARALLEL)})")
        if threads is None and os.environ.get("STEMCLI_THREADS", "").strip():
            env = os.environ["STEMCLI_THREADS"].strip()
            if not env.isdigit():
                raise ValueError(f"STEMCLI_THREADS must be a whole number, got '{env}'")
            threads = int(env)
        if threads is not None and int(threads) < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        card = load_card(find_card(model, self.default_model))
        self.card = card
        self.backend = backend
        self.threads = threads
        self.sources = tuple(card["sources"])
        self.sample_rate = int(card["sample_rate"])
        self.channels = int(card["channels"])
        self.segment = float(card["segment"])
        self.context = float(card.get("context", 0.0))
        # a model fed context joins chunks the way parts are joined below: a short cross-fade
        self.overlap = CONTEXT_OVERLAP if self.context > 0 else Separator.overlap
        self.name = str(card["name"])
        # samples by which an input may be shifted without changing the model's frame/pooling
        # grid (STFT hop x the network's time stride); parts start on multiples of it
        self.alignment = int(card.get("alignment") or card.get("config", {}).get("hop", 1))
        self.frontend = None
        if card.get("frontend") is not None:
            from stemcli.spectral import check_frontend

            self.frontend = check_frontend(card["frontend"], str(card.get("_path", self.name)))
        self.post = None
        where = str(card.get("_path", self.name))
        if (card.get("post") is None) != ("post" not in (card.get("files") or {})):
            raise ValueError(f"{where}: a post graph needs both the card's post entry and files.post; "
                             f"this card has only {'post' if card.get('post') is not None else 'files.post'}")
        if card.get("post") is not None:
            from stemcli.wavepost import check_post

            self.post = check_post(card["post"], self.sources, where)
        self.workers = 1
        self._pool: ThreadPoolExecutor | None = None
        if backend == "onnx":
            path = model_file(card, "onnx")
            post_file = model_file(card, "post") if self.post is not None else None
            n = int(threads) if threads else (os.cpu_count() or 1)
            if parallel == "time" and n > 1:
                self.workers = n
                self._run = self._onnx_runner(path, intra=1, post_file=post_file)  # one thread per time part
                self._pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="stemcli-ort")
            else:
                self._run = self._onnx_runner(path, intra=threads, post_file=post_file)  # parts in turn
        else:
            self._run = self._torch_runner(model_file(card, "torch"))

    def _onnx_runner(self, path: Path, intra: int | None, post_file: Path | None = None) -> Any:
        """The card's graph(s) on onnxruntime as ``mix [batch, channels, time] -> stems``: the
        mask graph through the front end if the card has one, then the post graph if given."""
        run = self._onnx_graph_runner(path, intra)
        if post_file is None:
            return run
        post_session = self._session(post_file, intra)
        return with_post(run, self.post, self.sources, self.channels, post_session, post_file)

    @staticmethod
    def _session(path: Path, intra: int | None) -> Any:
        import onnxruntime as ort

        try:
            return ort.InferenceSession(str(path), session_options(intra), providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ValueError(f"{path}: onnxruntime cannot load this model ({exc})") from exc

    def _onnx_graph_runner(self, path: Path, intra: int | None) -> Any:
        import onnxruntime as ort

        session = self._session(path, intra)
        in_name = session.get_inputs()[0].name
        if not hasattr(self, "session"):
            self.session = session  # for reports (thread settings)
        frontend = self.frontend
        if frontend is None:
            def run(mix: np.ndarray) -> np.ndarray:
                return session.run(None, {in_name: mix})[0]
        else:
            from stemcli.spectral import graph_outputs, separate_with_masks

            n_src = len(self.sources)
            expected = graph_outputs(frontend, n_src)  # masks, and masks_high with a split front end
            n_out = len(expected)
            graph_names = [o.name for o in session.get_outputs()]
            if len(graph_names) != n_out:
                raise ValueError(f"{path}: the graph has {len(graph_names)} output{'s' * (len(graph_names) > 1)}; "
                                 f"its card's frontend {'(split) ' * (n_out > 1)}needs {n_out}")
            # one output: whatever its name (cards from before the split); two: by their names
            out_names = graph_names if n_out == 1 else list(expected)
            if n_out > 1 and set(graph_names) != set(out_names):
                raise ValueError(f"{path}: the graph's outputs are {', '.join(graph_names)}, its card's "
                                 f"frontend needs {', '.join(out_names)}")
            local = threading.local()
            bound = [True]  # cleared for good when the graph's output is not the shape expected
            ort_errors = (RuntimeError, ort.capi.onnxruntime_pybind11_state.Fail,
                          ort.capi.onnxruntime_pybind11_state.InvalidArgument)

            def unbound(mag: np.ndarray) -> Any:
                out = session.run(out_names, {in_name: mag})
                return out[0] if n_out == 1 else tuple(out)

            def masks(mag: np.ndarray) -> Any:
                """The graph's masks (one array, or two with a ``split`` front end), written into
                this thread's buffers (reused while the part length stays the same, e.g. the
                parts of a song's equal chunks: no fresh 38 MB array each time); the buffers are
                consumed by ``separate_with_masks`` before the thread's next call."""
                if not bound[0]:
                    return unbound(mag)
                shapes = list(graph_outputs(frontend, n_src, *mag.shape[:3]).values())
                bufs = getattr(local, "bufs", None)
                if bufs is None or [b.shape for b in bufs] != shapes:
                    bufs = local.bufs = [np.empty(shape, np.float32) for shape in shapes]
                binding = session.io_binding()
                binding.bind_cpu_input(in_name, mag)
                for name, buf in zip(out_names, bufs):
                    binding.bind_output(name, "cpu", 0, np.float32, list(buf.shape), buf.ctypes.data)
                try:
                    session.run_with_iobinding(binding)
                except ort_errors:  # another output shape: run unbound from now on (the caller names it)
                    bound[0] = False
                    return unbound(mag)
                return bufs[0] if len(bufs) == 1 else tuple(bufs)

            def run(mix: np.ndarray) -> np.ndarray:
                return separate_with_masks(frontend, masks, mix, n_src)

        return run

    def _torch_runner(self, path: Path) -> Any:
        import torch

        from stemcli.train import archs

        if self.threads:
            torch.set_num_threads(int(self.threads))
        net = archs.build(self.card["config"])
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            net.load_state_dict(state)
        except Exception as exc:  # unpickling / shape errors: name the file
            raise ValueError(f"{path}: cannot load the state dict into '{self.card['architecture']}' ({exc})") from exc
        net.eval()
        net_post = net.post() if callable(getattr(net, "post", None)) else None
        if (net_post is not None) != (self.post is not None):
            raise ValueError(f"{self.card.get('_path', self.name)}: the card {'has' if self.post else 'has no'} "
                             f"post entry, its architecture config {'has' if net_post else 'has no'} post graph")
        if net_post is not None and net_post != self.post:  # e.g. the pair's stems in another order
            raise ValueError(f"{self.card.get('_path', self.name)}: the card's post entry {self.post} is not its "
                             f"architecture config's {net_post}")

        def run(mix: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return net(torch.from_numpy(mix)).numpy()

        return run

    def separate(self, mix: np.ndarray) -> np.ndarray:
        """Args:
            mix: [shape=(batch, channels, time)] float32 at ``sample_rate``.

        Returns:
            [shape=(batch, len(sources), channels, time)] float32; the stems sum to ``mix``.
        """
        mix = np.asarray(mix)
        if mix.ndim != 3 or mix.shape[1] != self.channels:
            raise ValueError(
                f"{self.name}: expected mix of shape (batch, {self.channels}, time), got {mix.shape}"
            )
        if mix.shape[-1] == 0:
            return np.zeros((mix.shape[0], len(self.sources), self.channels, 0), np.float32)
        mix = np.ascontiguousarray(mix, dtype=np.float32)
        rate, align = self.sample_rate, self.alignment
        parts = math.ceil(mix.shape[-1] / (PART_SECONDS * rate))
        bounds = split_points(mix.shape[-1], parts, int(MIN_PART_SECONDS * rate), align)
        if len(bounds) > 2:
            context = max(int(self.context * rate), int(FADE_SECONDS * rate))
            context = -(-context // align) * align
            return run_in_parts(self._run, mix, bounds, context, int(FADE_SECONDS * rate), self._pool)
        return np.asarray(self._run(mix), dtype=np.float32)

    def info(self) -> dict[str, Any]:
        d = super().info()
        d.update({"backend": self.backend, "card": self.card.get("_path"), "workers": self.workers,
                  "metrics": self.card.get("metrics", {})})
        return d
