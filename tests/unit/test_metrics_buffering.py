"""The buffered metrics write into prometheus_client's private histogram fields
(``_upper_bounds``, ``_buckets``, ``_sum``): these tests fail if those change."""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry, Counter, Histogram

from featurestore.metric_buffers import BufferedCounter, BufferedHistogram, ByLabel, Children
from featurestore.metrics import LATENCY_BUCKETS


def samples(registry: CollectorRegistry, name: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for m in registry.collect()
        for s in m.samples
        if s.name.startswith(name) and not s.name.endswith("_created")
    }


def assert_same_histogram(buffered: CollectorRegistry, direct: CollectorRegistry) -> None:
    """Buckets and count exactly; the sum up to float rounding (a flush adds the batch's
    total once, observe each value in turn)."""
    got, want = samples(buffered, "t_seconds"), samples(direct, "t_seconds")
    sums = [k for k in want if k[0] == "t_seconds_sum"]
    assert {k: v for k, v in got.items() if k not in sums} == {k: v for k, v in want.items() if k not in sums}
    for k in sums:
        assert math.isclose(got[k], want[k], rel_tol=1e-12), (k, got[k], want[k])


def observed_both_ways(values: list[float]) -> tuple[CollectorRegistry, CollectorRegistry]:
    """The same values through a BufferedHistogram (flushed) and through observe."""
    direct_registry, buffered_registry = CollectorRegistry(), CollectorRegistry()
    direct = Histogram("t_seconds", "t", ["r"], buckets=LATENCY_BUCKETS, registry=direct_registry)
    buffered = Histogram("t_seconds", "t", ["r"], buckets=LATENCY_BUCKETS, registry=buffered_registry)
    for v in values:
        direct.labels("a").observe(v)
    b = BufferedHistogram(buffered.labels("a"))
    for v in values:
        b.observe(v)
    b.flush()
    return buffered_registry, direct_registry


def test_a_buffered_histogram_flushes_exactly_what_observe_would_have_recorded() -> None:
    values = [0.0, 0.0001, 0.0002, 0.00021, 0.004, 0.5, 0.5, 0.75, 3.0, 99.0, math.inf]
    buffered_registry, direct_registry = observed_both_ways(values)
    assert_same_histogram(buffered_registry, direct_registry)
    assert samples(buffered_registry, "t_seconds")[("t_seconds_count", (("r", "a"),))] == len(values)


def test_a_buffered_counter_adds_up_on_flush_and_not_before() -> None:
    registry = CollectorRegistry()
    counter = Counter("c", "c", registry=registry)
    b = BufferedCounter(counter)
    b.inc()
    b.inc(2)
    assert samples(registry, "c_total")[("c_total", ())] == 0
    b.flush()
    assert samples(registry, "c_total")[("c_total", ())] == 3


def test_a_large_buffer_binned_by_numpy_records_exactly_what_observe_would_have() -> None:
    import random

    from featurestore import metric_buffers

    rnd = random.Random(7)
    values: list[float] = [10 ** rnd.uniform(-6, 2) for _ in range(3000)]
    values += list(LATENCY_BUCKETS) * 3  # every upper bound itself: observe puts it in its own bucket
    values += [0, 1, 2, 250]  # ints, as the row and key counts are
    values += [math.inf]  # in the +Inf bucket
    assert len(values) >= metric_buffers._VECTOR_FLUSH
    buffered_registry, direct_registry = observed_both_ways(values)
    assert_same_histogram(buffered_registry, direct_registry)


def test_a_nan_lands_in_no_bucket_on_either_flush_path_as_observe_leaves_it() -> None:
    from featurestore import metric_buffers

    for size in (3, metric_buffers._VECTOR_FLUSH + 1):
        registry = CollectorRegistry()
        hist = Histogram("t_seconds", "t", ["r"], buckets=LATENCY_BUCKETS, registry=registry)
        b = BufferedHistogram(hist.labels("a"))
        for _ in range(size - 1):
            b.observe(0.001)
        b.observe(math.nan)
        b.flush()
        buckets = {k: v for k, v in samples(registry, "t_seconds").items() if k[0] == "t_seconds_bucket"}
        assert max(buckets.values()) == size - 1  # the NaN is in no bucket, +Inf included


def test_a_by_label_dict_hands_out_the_children_s_buffer_of_each_label_and_flushes_into_it() -> None:
    registry = CollectorRegistry()
    children = Children(Counter("by_label_total", "x", ["view"], registry=registry), BufferedCounter)
    by_view = ByLabel(children)
    by_view["a"].inc(2)
    by_view["a"].inc(3)
    assert by_view["a"] is children("a") and "b" not in by_view
    by_view["a"].flush()
    assert registry.get_sample_value("by_label_total", {"view": "a"}) == 5
