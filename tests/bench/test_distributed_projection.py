"""bench/distributed.py's communication model: the ring all-reduce's cost and the projected step."""
import importlib.util
from pathlib import Path

import pytest

_path = Path(__file__).resolve().parents[2] / "bench" / "distributed.py"
_spec = importlib.util.spec_from_file_location("bench_distributed", _path)
model = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(model)


def test_a_ring_moves_2_n_minus_1_over_n_of_the_bytes_with_2_n_minus_1_latencies():
    megabyte, bandwidth = 1e6, 1e9
    assert model.ring_allreduce_seconds(1, megabyte, 1e-5, bandwidth) == 0.0
    assert model.ring_allreduce_seconds(2, megabyte, 1e-5, bandwidth) == pytest.approx(2e-5 + 1e-3)
    assert model.ring_allreduce_seconds(8, megabyte, 0.0, bandwidth) == pytest.approx(2 * 7 / 8 * 1e-3)
    assert model.halving_doubling_allreduce_seconds(512, megabyte, 1e-5, bandwidth) == pytest.approx(
        18 * 1e-5 + 2 * 511 / 512 * 1e-3)


def test_overlap_hides_at_most_the_backward_and_never_the_last_bucket():
    step, nbytes, bandwidth = 0.1, 1.25e7, 1.25e8  # 0.2 s of ring traffic at many ranks on 1 Gbit/s
    plain, overlapped = model.projected_step(step, nbytes, 64, 0.0, bandwidth, 2 / 3, last_bucket_bytes=1e6)
    communication = model.ring_allreduce_seconds(64, nbytes, 0.0, bandwidth)
    assert plain == pytest.approx(step + communication)
    assert overlapped == pytest.approx(step + communication - 2 / 3 * step)
    _, short = model.projected_step(step, 1e6, 64, 0.0, bandwidth, 2 / 3, last_bucket_bytes=5e5)
    assert short == pytest.approx(step + model.ring_allreduce_seconds(64, 5e5, 0.0, bandwidth))


def test_latency_and_bandwidth_fitted_back_from_the_model():
    sizes = [2**k for k in range(12, 24)]
    times = [model.ring_allreduce_seconds(4, size, 3e-6, 2e9) for size in sizes]
    latency, bandwidth = model.fit_latency_and_bandwidth(sizes, times, 4)
    assert latency == pytest.approx(3e-6, rel=1e-6) and bandwidth == pytest.approx(2e9, rel=1e-6)
