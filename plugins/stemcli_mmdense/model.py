"""MMDenseNet-family mask estimator, waveform in, stems out, sized for CPU speed.

Multi-scale multi-band DenseNet (Takahashi & Mitsufuji, 2017): dense blocks at several
resolutions joined by down-/up-sampling (an "MDenseNet"), one MDenseNet per frequency band
(low, high) plus one over the full band; the band outputs are concatenated along frequency,
joined with the full-band output along channels and refined by a last dense block.

What makes it fast on a 2-core CPU (onnxruntime):

* STFT with ``n_fft=2048, hop=1024`` (the paper's setting) and only ``max_bin`` bins fed to
  the network (bins above go to the last source);
* a stride-2 stem convolution before any dense block, so the finest dense blocks run on a
  quarter of the time-frequency points, and a stride-2 transposed convolution as mask head;
* small growth rates, post-activation ``Conv -> BatchNorm -> ReLU`` (onnxruntime folds the
  BatchNorm into the Conv).

Masks are a softmax over sources for the bins below ``max_bin``; the first ``S - 1`` sources
are inverted from their masked spectrograms (bins above ``max_bin`` left at zero) and the last
source is ``mixture - sum(others)`` in the waveform domain: the stems sum to the input exactly,
only ``S - 1`` inverse STFTs run, and the last source (``other`` by default) receives everything
above ``max_bin`` (16.5 kHz by default).

The torch module maps ``[batch, channels, time] -> [batch, sources, channels, time]`` (STFT ->
masks -> inverse STFT, all in torch, which is what training differentiates through).  Export
writes only :meth:`MMDenseNet.mask_net` (magnitudes -> masks) to ONNX, with dynamic batch and
frame axes; the runtime does the STFT and its inverse with an FFT in :mod:`stemcli.spectral`
(a matmul FFT inside the graph cost twice the network itself on onnxruntime).  Bidirectional
LSTMs at band bottlenecks (``"lstm"``, MMDenseLSTM, Takahashi et al. 2018) give the otherwise
local convolutional net a receptive field spanning the whole input.

An optional frame branch (``"frame": {"hidden": H}``, :class:`FrameBranch`) looks at each whole
frame (all ``max_bin`` bins, both channels) with a bidirectional LSTM over time and adds one
logit per source and bin to the convolutions' logits.  With it the convolutions may stop at
``conv_bin`` below ``max_bin``: the bins between (drums' cymbals above 11 kHz, say) get their
masks from the frame branch alone, at a per-frame cost instead of a per-point one
(``"per_source": true`` gives each source its own branch, :class:`PerSourceFrame`;
``"pool": P`` lets it see and answer those bins in groups of ``P``, :meth:`MMDenseNet.frame_logits`),
and the exported graph returns their masks apart, once for all channels (the front end's
``split``, see :meth:`MMDenseNet.frontend`).  An optional
bass branch (``"bass": {"bins": N}``, :class:`BassBranch`) adds logits for the lowest ``N`` bins
from a small dense net at the STFT's own resolution (the band nets see 2 x 2 pooled points).
An optional waveform correction (``"wave": {"hidden": H}``, :class:`WaveCorrection`) moves a
low-band waveform between two stems (drums and bass by default; ``"pair"`` may name more) after
the inverse STFT; its resampling and convolutions are exported as a second graph
(:meth:`MMDenseNet.post_net`), which the runtime runs after the inverse STFT
(:mod:`stemcli.wavepost`).  ``"chain": true`` makes the corrections of a longer pair a chain of
two-stem networks (:class:`WaveChain`; ``"hidden"`` may then list one width per network),
exported as the same single post graph.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from stemcli import wavepost
from stemcli.transforms import ISTFT, STFT, istft_frames, stft_native

MAG_EPS = 1e-10  # magnitude = sqrt(re^2 + im^2 + MAG_EPS)

DEFAULT_CONFIG: dict[str, Any] = {
    "architecture": "mmdense",
    "sources": ["vocals", "drums", "bass", "other"],
    "sample_rate": 44100,
    "channels": 2,
    "n_fft": 2048,
    "hop": 1024,
    "max_bin": 768,  # 16.5 kHz at 44.1 kHz / 2048
    "conv_bin": None,  # bins the convolutions see (None: max_bin); the frame branch alone above
    "split_bin": 256,  # low band below 5.5 kHz
    "stem_channels": 24,
    # each band net: dense growth, layers per scale (finest first), input pooling (time, freq)
    # relative to the stem output (its output is upsampled back by a transposed conv), and the
    # hidden size of the bidirectional LSTM at its bottleneck (0: none)
    "low": {"growth": 14, "layers": [2, 2, 3], "pool": [1, 1], "lstm": 0},
    "high": {"growth": 10, "layers": [1, 2, 2], "pool": [1, 2], "lstm": 0},
    "full": {"growth": 12, "layers": [2, 2, 2], "pool": [2, 2], "lstm": 64},
    "final": {"channels": 32, "growth": 12, "layers": 2},
    # full-band frame branch beside the convolutions (hidden size, 0: none; stacked
    # bidirectional LSTM layers, default 1; "per_source": one branch per source, default
    # false; "pool": its resolution above conv_bin, default 1): see FrameBranch and
    # MMDenseNet.frame_logits
    "frame": {"hidden": 0},
    # full-resolution bass path on the lowest ``bins`` bins (0: none): see BassBranch
    # ("lstm": H > 0: a bidirectional LSTM of H units over time at its bottleneck, see BassBranch)
    "bass": {"bins": 0, "channels": 8, "growth": 8, "layers": [1, 1, 2], "lstm": 0},
    # zero-sum waveform correction between two (or more) stems at a decimated rate (hidden 0:
    # none): see WaveCorrection
    # ("groups": G splits the hidden channels into G separate networks after the input layer,
    # each computing its own (K - 1) / G of the corrections: G = K - 1 gives each correction its
    # own network)
    # ("mask_loss": W > 0 also trains the masks' own stems, before the correction, with weight W
    # against the corrected stems' 1: see MMDenseNet.training_estimates)
    # ("chain": true: one two-stem network per correction, applied in turn, each seeing the last
    # stem as the ones before it left it: see WaveChain; "hidden" may then be a list, one width
    # per network, e.g. [32, 16])
    "wave": {"hidden": 0, "pair": ["drums", "bass"], "decimate": 32, "layers": 7, "kernel": 5, "groups": 1,
             "mask_loss": 0.0, "chain": False},
}


def _conv(cin: int, cout: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class DenseBlock(nn.Module):
    """``layers`` 3x3 conv layers, each seeing the concatenation of all previous outputs.

    Output channels: ``cin + layers * growth``.
    """

    def __init__(self, cin: int, growth: int, layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(_conv(cin + i * growth, growth) for i in range(layers))
        self.cout = cin + layers * growth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.cat([x, layer(x)], dim=1)
        return x


class Transition(nn.Module):
    """1x1 conv to ``cout`` channels, optionally followed by 2x2 average pooling."""

    def __init__(self, cin: int, cout: int, down: bool) -> None:
        super().__init__()
        self.conv = _conv(cin, cout, 1)
        self.pool = nn.AvgPool2d(2) if down else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(x))


class BottleneckLSTM(nn.Module):
    """MMDenseLSTM's recurrent branch (Takahashi et al., 2018): the bottleneck feature map is
    squeezed to one channel, a bidirectional LSTM runs over time on its ``freq`` bins, and a
    linear layer maps the hidden state back to ``freq`` bins: one extra channel with a receptive
    field spanning the whole input.

    Input ``[shape=(batch, channels, frames, freq)]``, output ``[shape=(batch, 1, frames, freq)]``.
    """

    def __init__(self, cin: int, freq: int, hidden: int) -> None:
        super().__init__()
        if freq < 1:
            raise ValueError(f"mmdense config: the LSTM bottleneck needs >= 1 frequency row, got {freq}")
        self.squeeze = _conv(cin, 1, 1)
        self.rnn = nn.LSTM(freq, hidden, batch_first=True, bidirectional=True)
        self.out = nn.Sequential(nn.Linear(2 * hidden, freq), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.squeeze(x)[:, 0]  # [B, T, F]
        y, _ = self.rnn(y)
        return self.out(y).unsqueeze(1)


class FrameBranch(nn.Module):
    """Per-frame full-band path beside the convolutions, adding to their mask logits.

    The dense blocks see a few dozen bins around each point; a drum hit or a bass note is
    recognised from the whole spectrum of a frame and from its neighbours seconds away.  This
    branch (Open-Unmix's layout, small: Uhlich et al. 2019) maps every frame's ``channels x
    bins`` log-magnitudes to ``hidden`` units (Linear -> BatchNorm -> tanh), runs ``layers``
    stacked bidirectional LSTMs over time (Open-Unmix has 3), joins their output with their
    input (skip), and maps back to one
    logit per source and bin (shared by the channels).  Its cost is per frame, not per
    time-frequency point: with ``hidden`` 256 over 1024 bins, 125 ms of the shipped mask graph's
    664 ms (onnxruntime profile, 30 s, one thread), where convolutions over the same 512 upper
    bins would double theirs.

    Input ``[shape=(batch, channels, frames, bins)]``, output ``[shape=(batch, sources, 1, frames, bins)]``.
    """

    def __init__(self, channels: int, bins: int, sources: int, hidden: int, layers: int = 1) -> None:
        super().__init__()
        if hidden < 2 or hidden % 2:
            raise ValueError(f"mmdense config: frame hidden size must be an even number >= 2, got {hidden}")
        if layers < 1:
            raise ValueError(f"mmdense config: frame layers must be >= 1, got {layers}")
        self.sources = sources
        self.inp = nn.Linear(channels * bins, hidden, bias=False)
        self.inp_bn = nn.BatchNorm1d(hidden)
        self.rnn = nn.LSTM(hidden, hidden // 2, num_layers=layers, batch_first=True, bidirectional=True)
        self.mid = nn.Linear(2 * hidden, hidden, bias=False)
        self.mid_bn = nn.BatchNorm1d(hidden)
        self.out = nn.Linear(hidden, sources * bins, bias=False)
        nn.init.zeros_(self.out.weight)  # starts as a no-op: the convolutions' masks unchanged

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, f = x.shape
        h = self.inp(x.permute(0, 2, 1, 3).reshape(b, t, c * f))  # [B, T, H]
        h = torch.tanh(self.inp_bn(h.transpose(1, 2)).transpose(1, 2))
        r, _ = self.rnn(h)
        h = self.mid(torch.cat([h, r], dim=2))
        h = torch.relu(self.mid_bn(h.transpose(1, 2)).transpose(1, 2))
        return self.out(h).reshape(b, t, self.sources, 1, f).permute(0, 2, 3, 1, 4)


class PerSourceFrame(nn.Module):
    """One :class:`FrameBranch` per source (``"frame": {"per_source": true}``), Open-Unmix's
    layout of one recurrent network per target: each sees the whole frame and owns its hidden
    state instead of sharing one with the other sources.  The input layers, LSTMs and middle
    layers are ``sources`` times a shared branch's of the same ``hidden`` size; the output
    layers together are the size of the shared one (each maps to one source's bins): 3.68M
    parameters against 1.71M at ``hidden`` 128 over 2 x 2048 bins and 4 sources.

    Input ``[shape=(batch, channels, frames, bins)]``, output ``[shape=(batch, sources, 1, frames, bins)]``.
    """

    def __init__(self, channels: int, bins: int, sources: int, hidden: int, layers: int = 1) -> None:
        super().__init__()
        self.branches = nn.ModuleList(FrameBranch(channels, bins, 1, hidden, layers) for _ in range(sources))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([branch(x) for branch in self.branches], dim=1)


class BassBranch(nn.Module):
    """Full-resolution path over the lowest bins, adding to the convolutions' mask logits.

    The stride-2 stem leaves the band nets 2 frames x 2 bins per point (43 Hz at 2048 / 44.1 kHz),
    coarser than the spacing of bass notes.  This branch runs a small :class:`MDenseNet` on the
    log-magnitudes of the lowest ``bins`` bins at the STFT's own resolution and adds one logit
    per source, channel and bin there; its output conv starts at zero (a no-op at
    initialisation).  With ``"lstm": H`` its bottleneck gets a :class:`BottleneckLSTM` (a
    bidirectional LSTM of ``H`` units over time on the bottleneck's ``bins / 2^(levels-1)``
    rows): the kick drum and the bass share these bins, and what tells them apart (a note held
    for a beat, a hit that decays in 100 ms, the same pattern a bar later) spans more frames
    than the branch's convolutions see.

    Input ``[shape=(batch, channels, frames, bins)]`` (frames a multiple of the pooling),
    output ``[shape=(batch, sources * channels, frames, bins)]``.
    """

    def __init__(self, channels: int, sources: int, cfg: dict[str, Any]) -> None:
        """``cfg``: the complete ``"bass"`` config (defaults merged)."""
        super().__init__()
        width = int(cfg["channels"])
        self.stem = _conv(channels, width)
        self.net = MDenseNet(width, int(cfg["growth"]), list(cfg["layers"]), int(cfg.get("lstm", 0)),
                             int(cfg["bins"]))
        self.out = nn.Conv2d(self.net.cout, sources * channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.net(self.stem(x)))


def lowpass_fir(decimate: int) -> torch.Tensor:
    """The decimating low-pass of :class:`WaveCorrection`, :func:`stemcli.wavepost.lowpass_fir`
    (the runtime of the exported post graph filters with the same taps)
    ``[shape=(8 * decimate + 1,)]`` float32."""
    return torch.from_numpy(wavepost.lowpass_fir(decimate))


class WaveCorrection(nn.Module):
    """A zero-sum waveform correction among two (or more) stems, in the band below about the
    decimated Nyquist frequency (see :func:`lowpass_fir` for the filter's transition band).

    The mask model's softmax decides, per time-frequency bin, how a bin's energy is shared; the
    kick drum and the bass share the bins below ~250 Hz, where most of both stems' error lies
    (``benchmarks/band_errors.py``), and a ratio mask there cannot follow the waveform within a
    93 ms frame.  This branch sees the waveforms themselves at a low rate: the mixture and the
    ``pair``'s stems' current estimates, low-passed and decimated by ``decimate`` (1378 Hz at
    44.1 kHz / 32), go through a stack of dilated 1-d convolutions (``layers`` residual blocks,
    dilation 1, 2, 4, ..., kernel ``kernel``: a receptive field of ``1 + (kernel - 1)(2^layers -
    1)`` decimated samples, 0.37 s by default), whose output ``delta`` is interpolated back with
    the same low-pass.  With two stems it is **added to the first stem and subtracted from the
    second**: the stems still sum to the mixture.  With ``K > 2`` stems in the ``pair`` the
    output holds ``K - 1`` corrections: correction ``k`` is added to stem ``k`` and each is
    subtracted from the last (in that order, as :func:`stemcli.wavepost.apply_post` does).
    The output layer starts at zero (a no-op at initialisation).

    ``groups`` ``G`` (dividing ``hidden`` and ``K - 1``) splits the dilated blocks and the output
    layer into ``G`` separate networks of ``hidden / G`` channels after the shared input layer:
    network ``g`` computes corrections ``g (K - 1) / G`` to ``(g + 1) (K - 1) / G - 1``, so with
    ``G = K - 1`` no correction shares its capacity with another (one shared network of 16
    channels among three stems learned the bass/other correction and dropped the drums one,
    export/README, session 28).

    Input: ``mix [shape=(batch, channels, time)]`` and ``est [shape=(batch, sources, channels,
    time)]``; output ``est`` with the pair corrected (a new tensor).
    """

    def __init__(self, channels: int, pair: tuple[int, ...], decimate: int, hidden: int, layers: int,
                 kernel: int, groups: int = 1) -> None:
        super().__init__()
        if len(pair) < 2 or len(set(pair)) != len(pair):
            raise ValueError(f"WaveCorrection: pair must hold two or more different stems, got {pair}")
        if not isinstance(groups, int) or groups < 1 or hidden % groups or (len(pair) - 1) % groups:
            raise ValueError(f"WaveCorrection: groups={groups!r} must be an integer dividing hidden={hidden} and "
                             f"the number of corrections, {len(pair) - 1}")
        self.pair, self.decimate = tuple(pair), decimate
        k = len(pair)
        # the low-pass in polyphase form: tap q * D + p of the 8 D + 1 taps at [p, q] (zero past
        # the last tap), so decimation is a matrix product and interpolation a stride-1
        # convolution (a stride-D convolution with one channel took 4-10 times as long in torch
        # on this CPU)
        fir = torch.from_numpy(wavepost.polyphase(decimate))  # [D, 9]
        self.register_buffer("fir_down", fir.contiguous(), persistent=False)
        self.register_buffer("fir_up", (decimate * fir.flip(1)).reshape(decimate, 1, 9).contiguous(), persistent=False)
        self.inp = nn.Conv1d((k + 1) * channels, hidden, 1)
        self.blocks = nn.ModuleList(
            nn.Conv1d(hidden, hidden, kernel, dilation=2**i, padding=(kernel // 2) * 2**i, groups=groups)
            for i in range(layers)
        )
        self.out = nn.Conv1d(hidden, (k - 1) * channels, 1, groups=groups)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def to_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, N, T] -> [B, N, ceil(T / D) + 8, D]``: 4 D zeros before (the filter's half
        length), zeros after, cut in blocks of ``D`` samples (:func:`stemcli.wavepost.blocks`
        does the same in numpy for the exported graph)."""
        b, n, t = x.shape
        d = self.decimate
        frames = -(-t // d)
        return nn.functional.pad(x, (4 * d, (frames + 8) * d - t - 4 * d)).reshape(b, n, frames + 8, d)

    def down_blocks(self, blocks: torch.Tensor) -> torch.Tensor:
        """Low-pass and keep every ``D``-th sample, from :meth:`to_blocks`: ``[B, N, L + 8, D] -> [B,
        N, L]`` (sample ``k`` centred on input sample ``k * D``): every block against the 9
        polyphase filters (one matrix product), then ``y[k]`` = the sum over ``q`` of block ``k +
        q``'s product with filter ``q`` (slices with constant bounds: the exported graph keeps a
        dynamic length).  The products are transposed first so that each slice is contiguous:
        the same sums in the same order, 2.2x faster on onnxruntime than nine strided gathers
        (4.3 against 9.7 ms for 17 s of six channels, one thread)."""
        z = (blocks @ self.fir_down).transpose(-1, -2)  # [B, N, 9, L + 8]
        y = z[:, :, 0, 0:-8]
        for q in range(1, 9):
            y = y + z[:, :, q, q : (q - 8) or None]
        return y

    def down(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`down_blocks` of :meth:`to_blocks`: ``[B, N, T] -> [B, N, ceil(T / D)]``."""
        return self.down_blocks(self.to_blocks(x))

    def up_all(self, x: torch.Tensor) -> torch.Tensor:
        """Interpolate back with the same low-pass (gain ``D``): ``[B, N, L] -> [B, N, L * D]``."""
        n = x.shape[1]
        y = nn.functional.conv1d(nn.functional.pad(x.flatten(0, 1).unsqueeze(1), (4, 4)), self.fir_up)  # [BN, D, L]
        return y.transpose(1, 2).flatten(1).unflatten(0, (-1, n))

    def up(self, x: torch.Tensor, length: int) -> torch.Tensor:
        """:meth:`up_all` cut to ``length <= L * D`` samples."""
        return self.up_all(x)[..., :length]

    def post_graph(self, blocks: torch.Tensor) -> torch.Tensor:
        """The exported post graph: ``blocks [B, (K + 1) * channels, L + 8, D]`` (:meth:`to_blocks`
        of the mixture and the pair's ``K`` stems) -> ``delta [B, (K - 1) * channels, L * D]``.
        Its convolutions run as 2-d ``1 x kernel`` convolutions (:meth:`core` ``as_2d``)."""
        return self.up_all(self.core(self.down_blocks(blocks), as_2d=True))

    def core(self, low: torch.Tensor, as_2d: bool = False) -> torch.Tensor:
        """The convolutions at the decimated rate: ``low [B, (K + 1) * channels, L]`` (the mixture,
        then the pair's stems) -> ``[B, (K - 1) * channels, L]``.

        ``as_2d`` computes the same convolutions, with the same weights, on ``[B, N, 1, L]`` as
        ``1 x kernel`` 2-d convolutions: the form the exported graph takes, because onnxruntime
        runs 2-d convolutions with its blocked-layout (NCHWc) kernels and 1-d ones without
        (the post graph of a 17 s part took 8.5 against 11.3 ms, one thread, AMD EPYC;
        export/README, session 29).  The outputs agree to float32 rounding."""
        def run(conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
            if not as_2d:
                return conv(x)
            return nn.functional.conv2d(x, conv.weight.unsqueeze(2), conv.bias, padding=(0, conv.padding[0]),
                                        dilation=(1, conv.dilation[0]), groups=conv.groups)

        y = run(self.inp, low.unsqueeze(2) if as_2d else low)
        for conv in self.blocks:
            y = y + run(conv, nn.functional.relu(y))
        y = run(self.out, nn.functional.relu(y))
        return y.squeeze(2) if as_2d else y

    def delta(self, mix: torch.Tensor, *stems: torch.Tensor) -> torch.Tensor:
        """The corrections ``[shape=(batch, (K - 1) * channels, time)]`` of the first ``K - 1``
        stems of the ``pair``, from the mixture and the ``K`` stems (each ``[batch, channels,
        time]``)."""
        with torch.autocast("cpu", enabled=False):  # the resampling stays float32 under --precision bfloat16
            low = self.down(torch.cat([mix, *stems], dim=1).float())
        y = self.core(low)
        with torch.autocast("cpu", enabled=False):
            return self.up(y.float(), mix.shape[-1])

    def forward(self, mix: torch.Tensor, est: torch.Tensor) -> torch.Tensor:
        d = self.delta(mix, *(est[:, i] for i in self.pair)).to(est.dtype)  # [B, (K - 1) C, T]
        return _apply_corrections(est, self.pair, d, mix.shape[1])


def _apply_corrections(est: torch.Tensor, pair: tuple[int, ...], d: torch.Tensor, c: int) -> torch.Tensor:
    """``est [B, S, C, T]`` with channel group ``n`` of ``d [B, (K - 1) C, T]`` added to stem
    ``pair[n]`` and subtracted from stem ``pair[-1]``, one correction at a time, as
    :func:`stemcli.wavepost.apply_post` does (a new tensor; the other stems untouched)."""
    out = est.clone()
    last = est[:, pair[-1]]
    for n, i in enumerate(pair[:-1]):
        dn = d[:, n * c : (n + 1) * c]
        out[:, i] = est[:, i] + dn
        last = last - dn
    out[:, pair[-1]] = last
    return out


class WaveChain(nn.Module):
    """The corrections of a ``pair`` of ``K >= 3`` stems as a chain of ``K - 1`` two-stem
    :class:`WaveCorrection` networks, applied in turn: network ``k`` sees the mixture, stem ``k``
    and the last stem **as the networks before it left it** (on the padded length, below), and
    moves its correction from the last stem to stem ``k``.  With ``["drums", "other", "bass"]``
    the first network has the shape and the inputs of the shipped drums/bass correction (not its
    weights: its keys are ``steps.0.*``), and the second corrects bass/other on the bass the
    first one corrected.  Close to this, a second network trained on top of the frozen shipped
    model gained bass +0.30 and other +0.17 dB and left drums untouched (session 28), while the
    three models with one branch over the three stems lost drums in their output (the first
    because its branch dropped the drums correction, the other two through their masks:
    export/README, sessions 28-30).

    The card, the post graph's input and output and :func:`stemcli.wavepost.apply_post` are
    those of a :class:`WaveCorrection` with the same pair: the graph takes the mixture and the
    ``K`` stems as blocks and returns the ``K - 1`` corrections.  For that the chain works on the
    padded length ``L * D`` (``L = ceil(time / D)``; the stems zero-padded, as the runtime's
    blocks are): correction ``k`` is interpolated back to all ``L * D`` samples and decimated
    again for the next network, which sees the decimated last stem minus it (the same as
    decimating the padded last stem minus the correction, the resampling being linear), and only
    the output is cut to ``time`` samples: torch and the exported graph compute the same thing
    for any length.  So the next network's last stem holds the correction's tail in the padding
    samples ``[time, L * D)``, where a corrected stem cut to ``time`` would hold zeros; with
    ``time`` a multiple of ``D`` the chain equals its networks applied one after the other.

    ``hidden`` is one width for every network or a tuple of ``K - 1`` widths, network ``k``
    taking the ``k``-th (e.g. ``(32, 16)``, the candidate ``mmdense40``'s: a 32-wide drums/bass
    network as in the shipped model's plain branch, then a 16-wide other/bass one).

    Input: ``mix [shape=(batch, channels, time)]`` and ``est [shape=(batch, sources, channels,
    time)]``; output ``est`` with the pair corrected (a new tensor).
    """

    def __init__(self, channels: int, pair: tuple[int, ...], decimate: int, hidden: int | tuple[int, ...],
                 layers: int, kernel: int) -> None:
        super().__init__()
        if len(pair) < 3 or len(set(pair)) != len(pair):
            raise ValueError(f"WaveChain: pair must hold three or more different stems, got {pair}")
        widths = (hidden,) * (len(pair) - 1) if isinstance(hidden, int) else tuple(hidden)
        if len(widths) != len(pair) - 1 or any(not isinstance(h, int) or isinstance(h, bool) or h < 1 for h in widths):
            raise ValueError(f"WaveChain: hidden must be one width >= 1 or one per network ({len(pair) - 1}), "
                             f"got {hidden!r}")
        self.pair, self.decimate = tuple(pair), decimate
        self.steps = nn.ModuleList(WaveCorrection(channels, (pair[k], pair[-1]), decimate, widths[k], layers, kernel)
                                   for k in range(len(pair) - 1))

    def corrections(self, low: torch.Tensor, as_2d: bool = False) -> torch.Tensor:
        """``low [B, (K + 1) * channels, L]`` (the decimated mixture, then the pair's stems) ->
        the ``K - 1`` corrections at the full rate, ``[B, (K - 1) * channels, L * D]``, each
        network after the first seeing the last stem minus the corrections before it.  The
        resampling runs in float32 (outside any autocast), the convolutions as
        :meth:`WaveCorrection.core` runs them."""
        c = low.shape[1] // (len(self.pair) + 1)
        mix, last = low[:, :c], low[:, -c:]
        out = []
        for k, step in enumerate(self.steps):
            y = step.core(torch.cat([mix, low[:, (k + 1) * c : (k + 2) * c], last], dim=1), as_2d=as_2d)
            with torch.autocast("cpu", enabled=False):
                d = step.up_all(y.float())  # [B, C, L * D]
                if k + 1 < len(self.steps):  # L * D samples: 4 D zeros on each side make to_blocks' L + 8 blocks
                    blocks = nn.functional.pad(d, (4 * self.decimate, 4 * self.decimate)).unflatten(2, (-1, self.decimate))
                    last = last - step.down_blocks(blocks)
            out.append(d)
        return torch.cat(out, dim=1)

    def post_graph(self, blocks: torch.Tensor) -> torch.Tensor:
        """The exported post graph, as :meth:`WaveCorrection.post_graph`: ``blocks [B, (K + 1) *
        channels, L + 8, D] -> delta [B, (K - 1) * channels, L * D]``."""
        return self.corrections(self.steps[0].down_blocks(blocks), as_2d=True)

    def delta(self, mix: torch.Tensor, *stems: torch.Tensor) -> torch.Tensor:
        """The corrections ``[shape=(batch, (K - 1) * channels, time)]`` of the first ``K - 1``
        stems of the ``pair``, from the mixture and the ``K`` stems (each ``[batch, channels,
        time]``)."""
        with torch.autocast("cpu", enabled=False):
            low = self.steps[0].down(torch.cat([mix, *stems], dim=1).float())
        return self.corrections(low)[..., : mix.shape[-1]]

    def forward(self, mix: torch.Tensor, est: torch.Tensor) -> torch.Tensor:
        d = self.delta(mix, *(est[:, i] for i in self.pair)).to(est.dtype)
        return _apply_corrections(est, self.pair, d, mix.shape[1])


class MDenseNet(nn.Module):
    """Multi-scale DenseNet: encoder blocks at scales 1, 1/2, ..., decoder back with skips.

    Args:
        cin: input channels.
        growth: dense growth rate.
        layers: layers of the dense block at each scale (finest first); the coarsest is the
            bottleneck, the others appear once in the encoder and once in the decoder.
    """

    def __init__(self, cin: int, growth: int, layers: list[int], lstm: int = 0, freq: int = 0) -> None:
        super().__init__()
        self.enc = nn.ModuleList()
        self.down = nn.ModuleList()
        skips = []
        c = cin
        for n in layers[:-1]:
            block = DenseBlock(c, growth, n)
            self.enc.append(block)
            skips.append(block.cout)
            half = max(growth, block.cout // 2)
            self.down.append(Transition(block.cout, half, down=True))
            c = half
        self.bottleneck = DenseBlock(c, growth, layers[-1])
        c = self.bottleneck.cout
        self.lstm = BottleneckLSTM(c, freq // 2 ** (len(layers) - 1), lstm) if lstm else None
        if self.lstm is not None:
            c += 1
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for n, skip in zip(reversed(layers[:-1]), reversed(skips)):
            self.up.append(nn.ConvTranspose2d(c, growth * 2, 2, stride=2))
            block = DenseBlock(growth * 2 + skip, growth, n)
            self.dec.append(block)
            c = block.cout

        self.cout = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block, down in zip(self.enc, self.down):
            x = block(x)
            skips.append(x)
            x = down(x)
        x = self.bottleneck(x)
        if self.lstm is not None:
            x = torch.cat([x, self.lstm(x)], dim=1)
        for up, block, skip in zip(self.up, self.dec, reversed(skips)):
            x = block(torch.cat([up(x), skip], dim=1))
        return x


class Band(nn.Module):
    """An :class:`MDenseNet` run on an average-pooled input, upsampled back, to ``cout`` channels."""

    def __init__(self, cin: int, cout: int, cfg: dict[str, Any], freq: int = 0) -> None:
        super().__init__()
        pool = tuple(int(v) for v in cfg.get("pool", (1, 1)))
        self.pool = nn.AvgPool2d(pool) if pool != (1, 1) else nn.Identity()
        self.net = MDenseNet(cin, int(cfg["growth"]), list(cfg["layers"]), int(cfg.get("lstm", 0)),
                             freq // pool[1])
        if pool != (1, 1):
            self.out = nn.Sequential(
                nn.ConvTranspose2d(self.net.cout, cout, pool, stride=pool, bias=False),
                nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            )
        else:
            self.out = _conv(self.net.cout, cout, 1)
        self.scale = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.net(self.pool(x)))


class MMDenseNet(nn.Module):
    """Waveform-to-stems MMDenseNet.

    Args:
        config: architecture dict (see :data:`DEFAULT_CONFIG`; missing keys take defaults).

    Input ``[shape=(batch, channels, time)]``, output ``[shape=(batch, sources, channels, time)]``.
    """

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        super().__init__()
        cfg = {**DEFAULT_CONFIG, **(config or {})}
        self.config = cfg
        self.n_src = len(cfg["sources"])
        self.n_ch = int(cfg["channels"])
        self.max_bin, self.split_bin = int(cfg["max_bin"]), int(cfg["split_bin"])
        self.conv_bin = int(cfg.get("conv_bin") or self.max_bin)
        frame = cfg.get("frame") or {}
        hidden, frame_layers = int(frame.get("hidden", 0)), int(frame.get("layers", 1))
        per_source = frame.get("per_source", False)
        pool = frame.get("pool", 1)
        if not isinstance(pool, int) or isinstance(pool, bool) or pool < 1:
            raise ValueError(f"mmdense config: frame.pool must be an integer >= 1, got {pool!r}")
        if not isinstance(per_source, bool):
            raise ValueError(f"mmdense config: frame.per_source must be true or false, got {per_source!r}")
        if per_source and not hidden:
            raise ValueError("mmdense config: frame.per_source needs a frame branch (frame.hidden > 0)")
        n_fft, hop = int(cfg["n_fft"]), int(cfg["hop"])
        # stem stride 2, then each band's input pooling and (levels - 1) 2x2 poolings
        multiple = 2 * max(
            max(int(v) for v in cfg[b].get("pool", (1, 1))) * 2 ** (len(cfg[b]["layers"]) - 1)
            for b in ("low", "high", "full")
        )
        for label, v in (("conv_bin", self.conv_bin), ("split_bin", self.split_bin)):
            if v % multiple or not 0 < v <= n_fft // 2:
                raise ValueError(f"mmdense config: {label}={v} must be a multiple of {multiple} in (0, n_fft/2]")
        if not 0 < self.max_bin <= n_fft // 2:
            raise ValueError(f"mmdense config: max_bin={self.max_bin} must be in (0, n_fft/2]")
        bass = {**DEFAULT_CONFIG["bass"], **(cfg.get("bass") or {})}
        self.bass_bin = int(bass["bins"])
        bass_multiple = 2 ** (len(bass["layers"]) - 1)
        bass_lstm = bass.get("lstm", 0)
        if not isinstance(bass_lstm, int) or isinstance(bass_lstm, bool) or bass_lstm < 0:
            raise ValueError(f"mmdense config: bass.lstm must be an integer >= 0 (0: none), got {bass_lstm!r}")
        if bass_lstm and not self.bass_bin:
            raise ValueError("mmdense config: bass.lstm needs a bass branch (bass.bins > 0)")
        if self.bass_bin and (self.bass_bin % max(bass_multiple, 2) or not 0 < self.bass_bin <= self.split_bin):
            raise ValueError(f"mmdense config: bass.bins={self.bass_bin} must be a multiple of "
                             f"{max(bass_multiple, 2)} in (0, split_bin={self.split_bin}]")
        if self.split_bin >= self.conv_bin:
            raise ValueError("mmdense config: split_bin must be below conv_bin (max_bin)")
        if self.conv_bin > self.max_bin or (self.conv_bin < self.max_bin and not hidden):
            raise ValueError("mmdense config: conv_bin must not exceed max_bin, and bins above it need "
                             "the frame branch (frame.hidden > 0)")
        if pool > 1 and (self.conv_bin == self.max_bin or (self.max_bin - self.conv_bin) % pool):
            raise ValueError(f"mmdense config: frame.pool={pool} needs bins above conv_bin={self.conv_bin}, "
                             f"max_bin - conv_bin a multiple of it (max_bin={self.max_bin})")
        self.frame_pool = pool
        self.multiple = max(multiple, bass_multiple if self.bass_bin else 1)  # frames are padded to it
        if self.max_bin % STFT(n_fft, hop).p:  # the exportable STFT's bin blocks
            raise ValueError(f"mmdense config: max_bin={self.max_bin} must be a multiple of {STFT(n_fft, hop).p}")
        self.stft = STFT(n_fft, hop, bins=self.max_bin)  # exportable front end (ONNX export only)
        self.istft = ISTFT(n_fft, hop, bins=self.max_bin)
        # per-bin input normalisation on log-magnitude (learned)
        self.in_scale = nn.Parameter(torch.ones(self.max_bin))
        self.in_bias = nn.Parameter(torch.zeros(self.max_bin))
        c0 = int(cfg["stem_channels"])
        self.stem = nn.Sequential(
            nn.Conv2d(self.n_ch, c0, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(c0), nn.ReLU(inplace=True)
        )
        fc = int(cfg["final"]["channels"])
        band_c = fc // 2
        half = self.conv_bin // 2  # frequency rows after the stride-2 stem
        self.low = Band(c0, band_c, cfg["low"], self.split_bin // 2)
        self.high = Band(c0, band_c, cfg["high"], half - self.split_bin // 2)
        self.full = Band(c0, fc - band_c, cfg["full"], half)
        self.final = DenseBlock(fc, int(cfg["final"]["growth"]), int(cfg["final"]["layers"]))
        self.head = nn.ConvTranspose2d(self.final.cout, self.n_src * self.n_ch, 2, stride=2)
        frame_cls = PerSourceFrame if per_source else FrameBranch
        frame_bins = self.conv_bin + (self.max_bin - self.conv_bin) // pool
        self.frame = frame_cls(self.n_ch, frame_bins, self.n_src, hidden, frame_layers) if hidden else None
        self.bass = BassBranch(self.n_ch, self.n_src, bass) if self.bass_bin else None
        self.wave = self._wave_branch(cfg.get("wave"), list(cfg["sources"]))

    def _wave_branch(self, given: Any, sources: list[str]) -> WaveCorrection | WaveChain | None:
        """The :class:`WaveCorrection` (with ``"chain": true`` the :class:`WaveChain`) of a
        ``"wave"`` config (missing fields take the defaults), or None (``hidden`` 0, or no config).

        Raises:
            ValueError: not an object, an unknown field (a misspelt one would silently leave
                the branch out), a field of the wrong type or range, a pair that is not two
                or more different sources of the model, ``groups`` not dividing ``hidden``
                and the number of corrections (or not 1 with ``chain``), a ``chain`` that is not a
                boolean or has fewer than three stems in the pair, a ``mask_loss`` or a
                ``chain`` without a branch, or a list of widths in ``hidden`` without
                ``chain``, of another length than the chain's networks, or holding anything
                but integers >= 1.
        """
        if given is None:
            given = {}
        if not isinstance(given, dict):
            raise ValueError(f"mmdense config: wave must be an object like {{\"hidden\": 16}}, got {given!r}")
        unknown = sorted(set(given) - set(DEFAULT_CONFIG["wave"]))
        if unknown:
            raise ValueError(f"mmdense config: unknown wave field(s) {', '.join(unknown)} "
                             f"(known: {', '.join(DEFAULT_CONFIG['wave'])})")
        wave = {**DEFAULT_CONFIG["wave"], **given}

        def _int(key: str, low: int) -> int:
            v = wave.get(key)
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise ValueError(f"mmdense config: wave.{key} must be an integer >= {low}, got {v!r}")
            return v

        chain = wave.get("chain")
        if not isinstance(chain, bool):
            raise ValueError(f"mmdense config: wave.chain must be true or false, got {chain!r}")
        widths = wave.get("hidden")
        if isinstance(widths, (list, tuple)):  # a chain's networks, one width each
            if not chain:
                raise ValueError(f"mmdense config: wave.hidden={list(widths)} gives each network of a chain its "
                                 "width; it needs wave.chain true (else one integer)")
            if not widths or any(not isinstance(h, int) or isinstance(h, bool) or h < 1 for h in widths):
                raise ValueError(f"mmdense config: wave.hidden must be an integer >= 0 or a list of integers >= 1, "
                                 f"got {list(widths)!r}")
            widths, hidden = tuple(widths), widths[0]
        else:
            hidden = _int("hidden", 0)
            widths = hidden
        decimate, layers, kernel = _int("decimate", 1), _int("layers", 0), _int("kernel", 1)
        groups = _int("groups", 1)
        if chain and groups != 1:
            raise ValueError(f"mmdense config: wave.chain gives each correction its own network already; "
                             f"wave.groups must be 1 with it, got {groups}")
        if chain and not hidden:
            raise ValueError("mmdense config: wave.chain chains the corrections' networks, but there is no "
                             "correction (wave.hidden is 0)")
        mask_loss = wave.get("mask_loss")
        if (not isinstance(mask_loss, (int, float)) or isinstance(mask_loss, bool) or not math.isfinite(mask_loss)
                or mask_loss < 0):
            raise ValueError(f"mmdense config: wave.mask_loss must be a finite number >= 0, got {mask_loss!r}")
        if mask_loss and not hidden:
            raise ValueError(f"mmdense config: wave.mask_loss={mask_loss} weighs the stems before the correction, "
                             "but there is no correction (wave.hidden is 0)")
        self.mask_loss = float(mask_loss)
        if layers > 16:
            raise ValueError(f"mmdense config: wave.layers={layers}: at most 16 (the dilation doubles per layer)")
        if decimate > wavepost.MAX_DECIMATE:
            raise ValueError(f"mmdense config: wave.decimate={decimate}: at most {wavepost.MAX_DECIMATE}")
        if kernel % 2 == 0:
            raise ValueError(f"mmdense config: wave.kernel must be odd, got {kernel}")
        if not hidden:  # the default pair need not be sources of this model
            return None
        pair = wave.get("pair")
        if (not isinstance(pair, (list, tuple)) or len(pair) < 2 or not all(isinstance(p, str) for p in pair)
                or len(set(pair)) != len(pair) or any(p not in sources for p in pair)):
            raise ValueError(f"mmdense config: wave.pair must name two or more different sources of {sources}, "
                             f"got {pair!r}")
        if hidden % groups or (len(pair) - 1) % groups:
            raise ValueError(f"mmdense config: wave.groups={groups} must divide wave.hidden={hidden} and the "
                             f"number of corrections, {len(pair) - 1} (one fewer than the pair's {len(pair)} stems)")
        idx = tuple(sources.index(p) for p in pair)
        if chain and len(pair) < 3:
            raise ValueError(f"mmdense config: wave.chain needs three or more stems in wave.pair (two make one "
                             f"correction, the plain branch), got {pair!r}")
        if chain:
            if isinstance(widths, tuple) and len(widths) != len(pair) - 1:
                raise ValueError(f"mmdense config: wave.hidden={list(widths)} needs one width per network of the "
                                 f"chain: {len(pair) - 1} for the pair {pair}")
            return WaveChain(self.n_ch, idx, decimate, widths, layers, kernel)
        return WaveCorrection(self.n_ch, idx, decimate, hidden, layers, kernel, groups)

    def logits(self, mag: torch.Tensor) -> torch.Tensor:
        """Mask logits from magnitudes, for the bins below ``max_bin``.

        Args:
            mag: [shape=(batch, channels, frames, max_bin)] (frames-major: conv height is time).

        Returns:
            [shape=(batch, sources * channels, frames, max_bin)].
        """
        return self.logits_from_log(torch.log1p(mag))

    def logits_from_log(self, logmag: torch.Tensor) -> torch.Tensor:
        """:meth:`logits` from ``log1p(mag)`` [shape=(batch, channels, frames, max_bin)]
        (the exported graph's input: the front end computes the logarithm)."""
        y, inp = self._conv_logits(logmag)
        if self.frame is None:
            return y
        b, c, frames = logmag.shape[0], logmag.shape[1], logmag.shape[2]
        if self.conv_bin < self.max_bin:  # logits above conv_bin come from the frame branch alone
            y = nn.functional.pad(y, (0, self.max_bin - self.conv_bin))
        # the frame logits, shared by the channels, expanded explicitly (an Expand then an Add of
        # equal shapes in the graph instead of a broadcast over the channel axis; with the
        # logarithm moved to the front end the graph went from 0.124 to 0.122 s on 16 s)
        f = self.frame_logits(inp)
        if self.frame_pool > 1:
            cb = self.conv_bin
            f = torch.cat([f[..., :cb], self._unpool(f[..., cb:])], dim=4)
        y = y.reshape(b, self.n_src, c, frames, self.max_bin) + f.expand(-1, -1, c, -1, -1)
        return y.reshape(b, self.n_src * c, frames, self.max_bin)

    def frame_logits(self, inp: torch.Tensor) -> torch.Tensor:
        """The frame branch's logits, at its own resolution.

        With ``"frame": {"pool": P}`` (P > 1) the branch sees and answers the bins above
        ``conv_bin`` in groups of ``P`` (the mean of each group's normalised log-magnitudes in;
        one logit per group out, the same for its ``P`` bins): above ``conv_bin`` the masks are
        the branch's alone, and there its input and output layers are most of its cost (the
        shipped 4096-point model's four branches: 2 x 2048 inputs and 2048 outputs each, a
        quarter of the mask graph), while ``P`` bins of 10.8 Hz are still narrow for a mask
        above 5.5 kHz.

        Args:
            inp: [shape=(batch, channels, frames, max_bin)] normalised log-magnitudes.

        Returns:
            [shape=(batch, sources, 1, frames, conv_bin + (max_bin - conv_bin) / P)].
        """
        if self.frame_pool > 1:
            cb = self.conv_bin
            b, c, t = inp.shape[0], inp.shape[1], inp.shape[2]  # traced sizes: dynamic axes in ONNX
            pooled = inp[..., cb:].reshape(b, c, t, -1, self.frame_pool).mean(dim=4)
            inp = torch.cat([inp[..., :cb], pooled], dim=3)
        return self.frame(inp)

    def _unpool(self, x: torch.Tensor) -> torch.Tensor:
        """Each entry of the last axis repeated ``frame_pool`` times: ``[B, S, C, T, n] -> [B, S, C, T, n * P]``.

        A nearest-neighbour ``Resize`` in the graph: onnxruntime's ``Expand`` of a new last axis
        (or a ``Gather``) took about four times as long (38 vs 9 ms for 3 x 736 x 384 values).
        """
        b, s, c, t, n = x.shape[0], x.shape[1], x.shape[2], x.shape[3], x.shape[4]
        y = nn.functional.interpolate(x.reshape(b * s * c, 1, t, n), scale_factor=(1.0, float(self.frame_pool)),
                                      mode="nearest")
        return y.reshape(b, s, c, t, n * self.frame_pool)

    def masks_from_log(self, logmag: torch.Tensor, split: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The first ``S - 1`` soft masks from ``log1p(mag)``: ``_softmax_masks`` of
        :meth:`logits_from_log`, computed without materialising the full-band logits.

        Above ``conv_bin`` the logits are the frame branch's alone, the same for every channel,
        so the softmax there runs once on ``[batch, sources, 1, frames, max_bin - conv_bin]``
        and the masks are expanded over the channels (returned apart, unexpanded, with
        ``split``); below it the convolutions' logits and the
        frame branch's are added as before.  (The same values as the padded version; on the
        shipped 4096-point model the graph skips a pad, an expand and an add over all 2048 bins.)
        With ``frame.pool`` P the softmax there runs on the branch's ``(max_bin - conv_bin) / P``
        grouped logits and each mask is repeated over its group.

        Args:
            logmag: [shape=(batch, channels, frames, max_bin)].
            split: return the masks below ``conv_bin`` and the channel-independent ones above
                it apart (the exported graph's two outputs, see :meth:`frontend`); only with
                bins above ``conv_bin``.

        Returns:
            [shape=(batch, sources - 1, channels, frames, max_bin)], or with ``split`` the pair
            ``[batch, sources - 1, channels, frames, conv_bin]``,
            ``[batch, sources - 1, 1, frames, max_bin - conv_bin]``.
        """
        b, c, frames = logmag.shape[0], logmag.shape[1], logmag.shape[2]
        if split and not self._split:
            raise ValueError("mmdense: split masks need bins above conv_bin (a frame branch)")
        if self.frame is None or self.conv_bin == self.max_bin:
            return _softmax_masks(self.logits_from_log(logmag).reshape(b, self.n_src, c, frames, self.max_bin))
        y, inp = self._conv_logits(logmag)
        f = self.frame_logits(inp)  # [B, S, 1, F, frame bins]
        cb = self.conv_bin
        low = y.reshape(b, self.n_src, c, frames, cb) + f[..., :cb].expand(-1, -1, c, -1, -1)
        high = _softmax_masks(f[..., cb:])  # pooled: one mask per group of bins, repeated
        if self.frame_pool > 1:
            high = self._unpool(high)
        if split:
            return _softmax_masks(low), high
        high = high.expand(-1, -1, c, -1, -1)
        return torch.cat([_softmax_masks(low), high], dim=4)

    def _conv_logits(self, logmag: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The convolutions' logits ``[batch, sources * channels, frames, conv_bin]`` (bass branch
        included) and the normalised input ``[batch, channels, frames, max_bin]``."""
        frames = logmag.shape[2]
        inp = logmag * self.in_scale + self.in_bias
        pad = (self.multiple - frames % self.multiple) % self.multiple
        padded = nn.functional.pad(inp[..., : self.conv_bin], (0, 0, 0, pad))
        x = self.stem(padded)
        s = self.split_bin // 2
        low = self.low(x[..., :s])
        high = self.high(x[..., s:])
        full = self.full(x)
        y = self.final(torch.cat([torch.cat([low, high], dim=3), full], dim=1))
        y = self.head(y)[:, :, :frames]
        if self.bass is not None:  # full-resolution logits for the lowest bins
            z = self.bass(padded[..., : self.bass_bin])[:, :, :frames]
            y = torch.cat([y[..., : self.bass_bin] + z, y[..., self.bass_bin :]], dim=3)
        return y, inp

    def masks(self, mag: torch.Tensor) -> torch.Tensor:
        """Soft masks from magnitudes, for the bins below ``max_bin``.

        Args:
            mag: [shape=(batch, channels, frames, max_bin)].

        Returns:
            [shape=(batch, sources, channels, frames, max_bin)], summing to 1 over sources.
        """
        b, c, frames = mag.shape[0], mag.shape[1], mag.shape[2]
        logits = self.logits(mag).reshape(b, self.n_src, c, frames, self.max_bin)
        return torch.softmax(logits, dim=1)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """Args:
            wave: [shape=(batch, channels, time)].

        Returns:
            [shape=(batch, sources, channels, time)]; the sources sum to ``wave``.
        """
        if torch.onnx.is_in_onnx_export():
            self._exportable()
            return self._forward_exportable(wave)
        est = self.mask_stems(wave)
        return est if self.wave is None else self.wave(wave, est)

    def training_estimates(self, wave: torch.Tensor) -> list[tuple[torch.Tensor, float]]:
        """What the trainer's loss compares with the references, each with its weight
        (:func:`stemcli.train.loop.training_loss`): the model's output, weight 1; with a
        ``"wave"`` correction and ``"mask_loss": W > 0`` also the masks' own stems before the
        correction, weight ``W``.  Trained on the corrected output alone, the mask net of
        ``mmdense35`` came out with worse stems of its own than one trained without the
        branch's second network (export/README, session 29); the second term is meant to keep
        it answerable for them (``mmdense36`` tests whether it does).  The one forward pass
        gives both (the correction takes the masks' stems as its input).

        Args:
            wave: [shape=(batch, channels, time)].

        Returns:
            ``[(estimate, weight), ...]``, each estimate [shape=(batch, sources, channels, time)].
        """
        if self.wave is None or not self.mask_loss:
            return [(self(wave), 1.0)]
        est = self.mask_stems(wave)
        return [(self.wave(wave, est), 1.0), (est, self.mask_loss)]

    def mask_stems(self, wave: torch.Tensor) -> torch.Tensor:
        """The stems of the masks alone, before any ``"wave"`` correction. Args:
            wave: [shape=(batch, channels, time)].

        Returns:
            [shape=(batch, sources, channels, time)]; the sources sum to ``wave``.
        """
        b, c, t = wave.shape
        n_fft, hop = self.stft.n_fft, self.stft.hop
        spec = stft_native(wave, n_fft, hop, self.max_bin).transpose(-1, -2)  # [B, C, F, max_bin]
        mag = torch.sqrt(spec.real.square() + spec.imag.square() + MAG_EPS)
        m = self.masks_from_log(torch.log1p(mag))
        # bins above max_bin go to the last source (the residual): they are never computed.
        # Masked as (real, imag) pairs, inverted frames-major: no complex copy of the masks, no
        # transposes of the spectrogram or its gradient (istft_frames)
        masked = torch.view_as_complex(torch.view_as_real(spec).unsqueeze(1) * m.unsqueeze(-1))
        est = istft_frames(masked, n_fft, hop, t)  # [B, S-1, C, T]
        return torch.cat([est, (wave - est.sum(dim=1)).unsqueeze(1)], dim=1)

    def _forward_exportable(self, wave: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` with the matmul STFT modules, for a one-graph ONNX export. Args:
            wave: [shape=(batch, channels, time)].

        Returns:
            [shape=(batch, sources, channels, time)]; the sources sum to ``wave``.
        """
        b, c, t = wave.shape
        s1 = self.n_src - 1
        z = self.stft.fft_layout(wave)  # [2, K2, B, C, F, P], bin = P * k2 + k1
        k2, nf, p = z.shape[1], z.shape[4], z.shape[5]
        mag = torch.sqrt((z * z).sum(0) + MAG_EPS)  # [K2, B, C, F, P]
        mag = mag.permute(1, 2, 3, 0, 4).reshape(b, c, nf, self.max_bin)
        logits = self.logits(mag)  # [B, S*C, F, max_bin]
        # softmax over sources in the inverse STFT's layout [P, K1, B, S, C, F], reached by
        # two single-axis moves with the softmax between them (a generic 6-d transpose is
        # slow on onnxruntime); the softmax is written out (Softmax on a non-last axis transposes)
        lg = logits.reshape(-1, self.max_bin).t().reshape(k2, p, b, self.n_src, c, nf)
        e = torch.exp(lg.clamp(-30.0, 30.0))
        m = (e[:, :, :, :s1] / _source_sum(e, 3)).transpose(0, 1)  # [P, K1, B, S-1, C, F]
        spec = z.permute(5, 0, 1, 2, 3, 4)  # [P, 2, K2, B, C, F]
        # bins above max_bin go to the last source (the residual): they are never computed
        masked = spec.unsqueeze(4) * m.unsqueeze(1)  # [P, 2, K1, B, S-1, C, F]
        est = self.istft.from_fft_layout(masked, t).reshape(b, s1, c, t)
        last = wave - est.sum(dim=1)
        return torch.cat([est, last.unsqueeze(1)], dim=1)

    def _exportable(self) -> None:
        if self.wave is not None:
            raise ValueError("mmdense config: the one-graph export has no \"wave\" correction; export the "
                             "mask graph and the post graph (stemcli export, see frontend() and post())")

    @property
    def _split(self) -> bool:
        """Whether the masks above ``conv_bin`` are the frame branch's alone (one per source and
        bin, shared by the channels): then the exported graph returns them apart."""
        return self.frame is not None and self.conv_bin < self.max_bin

    def frontend(self) -> dict[str, Any]:
        """The STFT front end of the exported mask graph (see :mod:`stemcli.spectral`); with
        bins above ``conv_bin``, ``split`` there: the graph's second output holds their masks
        once for all channels."""
        return {"type": "stft-masks", "n_fft": self.stft.n_fft, "hop": self.stft.hop, "bins": self.max_bin,
                "eps": MAG_EPS, "residual": True, "input": "log1p", **({"split": self.conv_bin} if self._split else {})}

    def mask_net(self) -> nn.Module:
        """The part exported to ONNX: ``log1p(mag) [B, C, F, max_bin] -> masks [B, S - 1, C, F, max_bin]``,
        or the two outputs of :meth:`masks_from_log` with ``split`` (see :meth:`frontend`)."""
        return _MaskNet(self)

    def post(self) -> dict[str, Any] | None:
        """The card's ``post`` entry of a model with a ``"wave"`` correction (the second ONNX
        graph, run after the inverse STFT: :mod:`stemcli.wavepost`), else None."""
        if self.wave is None:
            return None
        names = list(self.config["sources"])
        return {"type": wavepost.POST_TYPE, "pair": [names[k] for k in self.wave.pair], "decimate": self.wave.decimate}

    def post_net(self) -> nn.Module:
        """The post graph: ``blocks [B, (K + 1) * channels, L + 8, D] -> delta [B, (K - 1) * channels, L * D]``
        (:meth:`WaveCorrection.post_graph`).

        Raises:
            ValueError: the model has no ``"wave"`` correction.
        """
        if self.wave is None:
            raise ValueError("mmdense config: no \"wave\" correction, so no post graph")
        return _PostNet(self.wave)


class _PostNet(nn.Module):
    def __init__(self, wave: WaveCorrection | WaveChain) -> None:
        super().__init__()
        self.wave = wave

    def forward(self, blocks: torch.Tensor) -> torch.Tensor:
        return self.wave.post_graph(blocks)


class _MaskNet(nn.Module):
    def __init__(self, net: MMDenseNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, logmag: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        return self.net.masks_from_log(logmag, split=self.net._split)


def _softmax_masks(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over sources (axis 1) of ``[B, S, ...]`` logits, the first ``S - 1`` kept.

    Written out with clamped logits (identical in training, in torch and in the ONNX graph,
    where ``Softmax`` on a non-last axis would add transposes), the denominator as a chain of
    ``Add``s: onnxruntime's ``ReduceSum`` over the source axis took 13 of the shipped mask
    graph's ~215 ms on a 17 s part (one thread), the adds about 2.
    """
    e = torch.exp(logits.clamp(-30.0, 30.0))
    return e[:, :-1] / _source_sum(e, 1)


def _source_sum(e: torch.Tensor, dim: int) -> torch.Tensor:
    """``e.sum(dim, keepdim=True)`` as a chain of ``Add``s (see :func:`_softmax_masks`)."""
    total = e.narrow(dim, 0, 1)
    for i in range(1, e.shape[dim]):
        total = total + e.narrow(dim, i, 1)
    return total


def build(config: dict[str, Any]) -> MMDenseNet:
    """Construct the model from its JSON config."""
    return MMDenseNet(config)
