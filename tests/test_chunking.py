"""Chunk planning and overlap-add: an identity separator must come back unchanged."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import GainSeparator, IdentitySeparator
from stemcli.chunking import OverlapAdd, chunk_weight, plan_chunks
from stemcli.pipeline import separate_array


@pytest.mark.parametrize("seed", range(12))
def test_identity_reproduces_input_random_plans(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 40000))
    sep = IdentitySeparator(segment=float(rng.uniform(0.005, 0.5)), context=float(rng.uniform(0, 0.05)))
    overlap = float(rng.uniform(0, 0.95))
    x = rng.standard_normal((2, n)).astype(np.float32)
    out = separate_array(sep, x, overlap=overlap)
    assert out.shape == (2, 2, n)
    np.testing.assert_allclose(out[0], x, atol=1e-6)
    assert not out[1].any()


def test_mask_based_stems_sum_to_mixture() -> None:
    x = np.random.default_rng(1).standard_normal((2, 30001)).astype(np.float32)
    out = separate_array(GainSeparator(), x, overlap=0.4)
    np.testing.assert_allclose(out.sum(axis=0), x, atol=1e-6)


@pytest.mark.parametrize("total,segment,overlap", [(10, 100, 0.25), (1000, 100, 0.0), (1001, 100, 0.5), (12345, 1000, 0.9), (1, 1, 0.0)])
def test_plan_covers_everything_without_tiny_tail(total: int, segment: int, overlap: float) -> None:
    plan = plan_chunks(total, segment, overlap, context=7)
    covered = np.zeros(total, bool)
    for c in plan:
        covered[c.start : c.stop] = True
        assert c.in_start == max(0, c.start - 7) and c.in_stop == min(total, c.stop + 7)  # no padding
        assert c.length == min(segment, total)  # every chunk is a full segment
    assert covered.all()
    assert plan[0].start == 0 and plan[-1].stop == total
    starts = [c.start for c in plan]
    assert starts == sorted(starts)
    if len(plan) > 1:
        assert max(np.diff(starts)) <= max(1, int(segment * (1 - overlap)))


@pytest.mark.parametrize(
    "args,match",
    [((0, 10, 0.1), "empty"), ((10, 0, 0.1), "segment"), ((10, 5, 1.5), "overlap"), ((10, 5, -0.1), "overlap"), ((10, 5, 0.1, -1), "context")],
)
def test_plan_rejects_bad_arguments(args: tuple, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        plan_chunks(*args)


def test_weights_never_reach_zero() -> None:
    for n in (1, 2, 3, 10, 1001):
        w = chunk_weight(n)
        assert w.shape == (n,) and w.min() > 0 and w.max() == 1.0


def test_overlap_add_streams_in_bounded_memory() -> None:
    """Popping as chunks arrive keeps the buffer within about one segment."""
    seg, total = 1000, 200_000
    plan = plan_chunks(total, seg, 0.5)
    ola = OverlapAdd(1, 1, 0, total)
    x = np.arange(total, dtype=np.float64)
    got, biggest = [], 0
    for i, c in enumerate(plan):
        ola.add(c, x[None, None, c.start : c.stop])
        biggest = max(biggest, ola._w.shape[0])
        got.append(ola.pop(plan[i + 1].start if i + 1 < len(plan) else total))
    np.testing.assert_allclose(np.concatenate(got, axis=-1)[0, 0], x, rtol=1e-6)
    assert biggest <= seg


def test_overlap_add_rejects_wrong_shape() -> None:
    plan = plan_chunks(100, 50, 0.0)
    ola = OverlapAdd(2, 2, 0, 100)
    with pytest.raises(ValueError, match="expected output shape"):
        ola.add(plan[0], np.zeros((2, 2, 49)))


class _NoisySeparator(IdentitySeparator):
    """Each call returns different noise spanning 1e-30 .. 1e3 in magnitude: an overlap that was
    not weighted, or a weighted sample that was not, shows up as a bit difference."""

    def separate(self, mix: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng(self.calls)
        self.calls += 1
        shape = (mix.shape[0], 2, *mix.shape[1:])
        return (rng.standard_normal(shape) * 10.0 ** rng.uniform(-30, 3, shape)).astype(np.float32)


def _weighted_average(outputs: list[np.ndarray], plan: list, total: int) -> np.ndarray:
    """The textbook weighted overlap-add, in float64, without any shortcut."""
    acc = np.zeros((2, 2, total))
    wsum = np.zeros(total)
    for c, y in zip(plan, outputs):
        w = chunk_weight(c.length)
        acc[..., c.start : c.stop] += y.astype(np.float64) * w
        wsum[c.start : c.stop] += w
    return (acc / wsum).astype(np.float32)


@pytest.mark.parametrize("total,segment,overlap", [(1000, 2000, 0.25), (10_000, 1500, 0.25), (10_000, 1500, 0.0),
                                                   (10_001, 700, 0.8), (9_999, 3000, 0.5)])
def test_stream_equals_the_weighted_average_bit_for_bit(total: int, segment: int, overlap: float) -> None:
    """Samples only one chunk covers bypass the weights; the stems must not change by one bit."""
    rate = 10_000
    x = np.zeros((2, total), np.float32)
    sep = _NoisySeparator(segment=segment / rate, context=0.003, sample_rate=rate)
    got = separate_array(sep, x, overlap=overlap)
    plan = plan_chunks(total, segment, overlap, int(round(0.003 * rate)))
    replay = _NoisySeparator(segment=segment / rate, context=0.003, sample_rate=rate)
    outputs = []
    for c in plan:
        y = replay.separate(np.zeros((1, 2, c.in_stop - c.in_start), np.float32))[0]
        outputs.append(y[..., c.start - c.in_start : c.start - c.in_start + c.length])
    want = _weighted_average(outputs, plan, total)
    assert got.dtype == np.float32 and got.shape == want.shape
    assert np.array_equal(got, want)


def test_overlap_add_skip_refuses_accumulated_samples() -> None:
    plan = plan_chunks(100, 60, 0.5)
    ola = OverlapAdd(1, 1, 0, 100)
    ola.add(plan[0], np.ones((1, 1, 60)))
    with pytest.raises(ValueError, match="cannot skip"):
        ola.skip(10)
    fresh = OverlapAdd(1, 1, 0, 100)
    fresh.skip(30)
    assert fresh.base == 30
    with pytest.raises(ValueError, match="before emitted sample"):
        fresh.add(plan[0], np.ones((1, 1, 60)))


class _RecordingSeparator(IdentitySeparator):
    """Identity that records every input it is given."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.inputs: list[np.ndarray] = []

    def separate(self, mix: np.ndarray) -> np.ndarray:
        self.inputs.append(mix.copy())
        return super().separate(mix)


@pytest.mark.parametrize("total", [300, 44100 * 3 + 17])
def test_context_is_real_audio_never_padding(total: int) -> None:
    """Every sample fed to the separator is track audio: context stops at the track edges, so
    the separator sees the track's first and last samples at the ends of the edge chunks and
    the samples it is given add up to the plan's clipped inputs (no zeros separated)."""
    x = (np.arange(total, dtype=np.float32) + 1.0)[None].repeat(2, axis=0)  # no sample is zero
    sep = _RecordingSeparator(segment=1.0, context=0.05)
    out = separate_array(sep, x)
    np.testing.assert_array_equal(out[0], x)
    plan = plan_chunks(total, 44100, sep.overlap, int(round(0.05 * 44100)))
    assert [m.shape[-1] for m in sep.inputs] == [c.in_stop - c.in_start for c in plan]
    assert all((m != 0).all() for m in sep.inputs)
    assert sep.inputs[0][0, 0, 0] == 1.0 and sep.inputs[-1][0, 0, -1] == float(total)


def test_separator_overlap_is_the_default() -> None:
    """``overlap=None`` takes the separator's own; an explicit one overrides it."""
    sep = IdentitySeparator(segment=1.0, context=0.05)
    total = 44100 * 10 - 22050
    sep.overlap = 0.01
    sep.calls = 0
    separate_array(sep, np.ones((2, total), np.float32))
    assert sep.calls == len(plan_chunks(total, 44100, 0.01)) == 10  # 9.5 s in 1 s chunks
    sep.calls = 0
    separate_array(sep, np.ones((2, total), np.float32), overlap=0.25)
    assert sep.calls == len(plan_chunks(total, 44100, 0.25)) == 13


@pytest.mark.parametrize("workers", [0, 2, 3])
def test_time_parts_join_with_known_crossfades(workers: int) -> None:
    """``run_in_parts`` on a part function whose answer is known: each part returns its input
    plus its own length in thousands of samples (as a second source, minus it).  Away from the boundaries every sample
    is its part's, across each boundary the blend is linear in the fade (centred on it), the
    sources still sum to the input, and the result does not depend on the worker pool."""
    from concurrent.futures import ThreadPoolExecutor

    from stemcli.runtime import run_in_parts, split_points

    rng = np.random.default_rng(3)
    total, context, fade = 50_000, 700, 400
    mix = rng.standard_normal((1, 2, total)).astype(np.float32)
    bounds = split_points(total, 4, 5000, align=64)
    assert len(bounds) == 5

    def run(x: np.ndarray) -> np.ndarray:
        n = np.float32(x.shape[-1] / 1000)
        return np.stack([x + n, -n + 0 * x], axis=1)  # [B, 2, C, T], the sources sum to x

    if workers:
        with ThreadPoolExecutor(workers) as pool:
            got = run_in_parts(run, mix, bounds, context, fade, pool)
    else:
        got = run_in_parts(run, mix, bounds, context, fade, None)
    spans = [(max(0, a - context), min(total, b + context)) for a, b in zip(bounds[:-1], bounds[1:])]
    level = np.empty(total, np.float32)
    for (a, b), (lo, hi) in zip(zip(bounds[:-1], bounds[1:]), spans):
        level[a:b] = (hi - lo) / 1000
    ramp = (np.arange(fade, dtype=np.float32) + 0.5) / fade
    for i, b in enumerate(bounds[1:-1], start=1):
        prev, nxt = (spans[i - 1][1] - spans[i - 1][0]) / 1000, (spans[i][1] - spans[i][0]) / 1000
        level[b - fade // 2 : b + fade // 2] = (1 - ramp) * prev + ramp * nxt
    assert got.shape == (1, 2, 2, total) and got.dtype == np.float32
    np.testing.assert_allclose(got[0, 0], mix[0] + level, rtol=0, atol=1e-5)
    np.testing.assert_allclose(got[0, 1], np.broadcast_to(-level, (2, total)), rtol=0, atol=1e-5)
    np.testing.assert_allclose(got.sum(axis=1), mix, atol=1e-5)
    assert len({float(v) for v in level}) > 4  # the parts differ, so the blend is tested


@pytest.mark.parametrize("bad", ["sources", "short"])
def test_time_parts_of_different_shapes_are_refused(bad: str) -> None:
    """A part function answering one part with another source count, or one sample short, is
    an error naming the shapes, not a silently misaligned join; with a pool the error reaches
    the caller too."""
    from concurrent.futures import ThreadPoolExecutor

    from stemcli.runtime import run_in_parts, split_points

    mix = np.zeros((1, 2, 30_000), np.float32)
    bounds = split_points(30_000, 3, 5000)

    def run(x: np.ndarray) -> np.ndarray:
        y = np.stack([x, x], axis=1)
        if x.shape[-1] < 11_000:  # the first and last parts: only one context side
            return y
        return np.stack([x, x, x], axis=1) if bad == "sources" else y[..., :-1]

    with pytest.raises(ValueError, match="time parts returned shapes"):
        run_in_parts(run, mix, bounds, 500, 100, None)
    with ThreadPoolExecutor(2) as pool, pytest.raises(ValueError, match="time parts returned shapes"):
        run_in_parts(run, mix, bounds, 500, 100, pool)


def test_one_chunk_result_is_the_callers_own() -> None:
    """A song within one segment comes back without the join's copy, yet as an array of its
    own: writeable, sharing no memory with the input, and unchanged by the next separation
    (also for a separator that answers with a read-only array)."""

    class ReadOnly(IdentitySeparator):
        def separate(self, mix: np.ndarray) -> np.ndarray:
            out = super().separate(mix)
            out.flags.writeable = False
            return out

    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 20_000)).astype(np.float32)
    for sep in (IdentitySeparator(segment=1.0), ReadOnly(segment=1.0)):
        a = separate_array(sep, x)
        assert sep.calls == 1 and a.flags.writeable and a.flags.c_contiguous
        assert not np.shares_memory(a, x)
        keep = a.copy()
        b = separate_array(sep, 2 * x)
        np.testing.assert_array_equal(a, keep)
        np.testing.assert_allclose(b[0], 2 * x)
        a[0] = 0.0  # the caller may write into it
        np.testing.assert_allclose(separate_array(sep, x)[0], x)
