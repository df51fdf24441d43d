"""bench.plan: the capacity arithmetic on small benchmark files written here (no model, no service)."""

from __future__ import annotations

import json

import pytest

from bench import plan

THROUGHPUT = {
    "model": "m",
    "device": "cpu",
    "ncpu": 2,
    "unbatched": {"B": 1, "max_realtime_streams": 5.0},
    "batched": [
        {"B": 16, "max_realtime_streams": 20.0},
        {"B": 1, "max_realtime_streams": 5.0},
        {"B": 4, "max_realtime_streams": 10.0},
    ],
}
REPORT = {
    "plan": {"streams": 20},
    "sessions": {"realtime": 18},
    "workers": [{"id": "a"}, {"id": "b"}],
    "breakdown": {"compute": {"mean": 0.3}, "batch": {"mean": 6.0}},
}


def write(tmp_path, data, name="r.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def test_throughput_rows_are_read_sorted_with_the_unbatched_rtf(tmp_path):
    m = plan.load(write(tmp_path, THROUGHPUT))
    assert m.points == ((1.0, 5.0), (4.0, 10.0), (16.0, 20.0)) and m.unbatched_rtf == pytest.approx(0.2)
    assert (m.device, m.ncpu) == ("cpu", 2)


def test_streams_per_worker_solves_utilisation_times_rt_equals_streams_between_measured_batches():
    points = ((1.0, 5.0), (4.0, 10.0), (16.0, 20.0))
    # f(4) = 0.7 x 10 - 4 = 3, f(16) = 0.7 x 20 - 16 = -2: the root of the linear piece is 4 + 12 x 3/5 = 11.2,
    # where RT = 10 + 10 x 7.2/12 = 16 and 0.7 x 16 = 11.2.
    assert plan.streams_per_worker(points, 0.7, 16) == pytest.approx(11.2)
    assert plan.streams_per_worker(points, 0.7, 4) == 4  # the batch cannot exceed the worker's --concurrency
    assert plan.streams_per_worker(points, 1.0, 16) == 16  # 20 >= 16: the largest batch keeps up


def test_a_worker_too_slow_for_one_stream_gets_a_fraction_and_no_plan():
    assert plan.streams_per_worker(((1.0, 0.5),), 0.7, 16) == pytest.approx(0.35)
    p = plan.plan(plan.Measurement("t", "cpu", 2, ((1.0, 0.5),)), 10)
    assert p.workers == 0


def test_plan_for_a_cpu_throughput_result(tmp_path):
    p = plan.plan(plan.load(write(tmp_path, THROUGHPUT)), 100)
    assert p.streams_per_worker == pytest.approx(11.2)
    assert (p.workers, p.cores, p.gpus) == (9, 18, 0)  # ceil(100 / 11.2)
    assert p.rtf == pytest.approx(1 / 16)
    # the seed's formula with the RTF at the batch reached gives the same estimate; unbatched, 3 times as many
    assert p.seed_workers == pytest.approx(100 / 11.2)
    assert p.seed_workers_unbatched == pytest.approx(100 * 0.2 / 0.7)


def test_gpu_results_plan_gpus_and_default_to_the_gpu_workers_concurrency(tmp_path):
    data = dict(
        THROUGHPUT,
        device="cuda:0",
        batched=[{"B": 16, "max_realtime_streams": 40.0}, {"B": 64, "max_realtime_streams": 100.0}],
    )
    p = plan.plan(plan.load(write(tmp_path, data)), 1000)
    assert plan.streams_per_worker(((16.0, 40.0), (64.0, 100.0)), 0.7, 64) == 64  # 0.7 x 100 = 70 >= 64
    assert (p.workers, p.gpus, p.cores) == (16, 16, 32)  # ceil(1000 / 64)


def test_a_load_test_report_gives_one_point_from_its_timing(tmp_path):
    m = plan.load(write(tmp_path, REPORT))
    # 0.3 s per batch of 6 = 0.05 s per stream-chunk of 0.6 s audio: 12 real-time streams at batch 6
    assert m.points == ((6.0, pytest.approx(12.0)),) and m.unbatched_rtf is None
    assert "18 of 20 streams" in m.observed and "2 worker" in m.observed
    p = plan.plan(m, 100)
    assert p.streams_per_worker == pytest.approx(8.4)  # 0.7 x 12: RT is never extrapolated upwards
    assert p.workers == 12 and p.seed_workers == pytest.approx(100 / 12 / 0.7)


def test_a_report_without_timing_and_an_unknown_file_are_refused(tmp_path):
    with pytest.raises(plan.PlanError, match="timing"):
        plan.load(write(tmp_path, dict(REPORT, breakdown={"compute": {"mean": None}, "batch": {"mean": None}})))
    with pytest.raises(plan.PlanError, match="neither"):
        plan.load(write(tmp_path, {"something": 1}))


def test_main_prints_workers_beside_the_seed_formula(tmp_path, capsys):
    assert plan.main([str(write(tmp_path, THROUGHPUT)), "--streams", "100"]) == 0
    out = capsys.readouterr().out
    assert "100 online streams: 9 workers (18 cores)" in out
    assert "streams x RTF / utilisation: 100 x 0.0625 / 0.7 = 8.9" in out and "28.6 workers" in out


def test_modes_other_than_online_are_not_measurable_yet(tmp_path, capsys):
    assert plan.main([str(write(tmp_path, THROUGHPUT)), "--streams", "10", "--mode", "2pass"]) == 2
    assert "not measurable yet" in capsys.readouterr().err


def test_main_exits_1_when_no_number_of_workers_keeps_up(tmp_path, capsys):
    slow = dict(THROUGHPUT, batched=[{"B": 1, "max_realtime_streams": 0.5}])
    assert plan.main([str(write(tmp_path, slow)), "--streams", "10"]) == 1
    assert "cannot keep up with a single stream" in capsys.readouterr().out
