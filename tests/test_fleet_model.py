"""The fleet-scale model of BENCHMARKS.md: its arithmetic from given figures (fast,
pure), and its measurement at a tiny size on a redis-server of its own, where counts
are asserted, never speed."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import model
from bench.model import Costs, Measured, Run
from bench.server import BenchRedis

COSTS = Costs(exact_per_call=20e-6, batched_per_flush=25e-6, batch_interval=0.05, breakers=16)


def a_run(
    mode: model.Mode = "exact",
    processes: int = 4,
    calls: int = 1000,
    round_trips: int = 1000,
    cpu_seconds: float = 0.11,
    idle_cpu_share: float = 0.01,
) -> Run:
    return Run(
        mode=mode,
        processes=processes,
        rate_asked=100.0,
        process_rates=(100.0,) * processes,
        calls=calls,
        seconds=1.0,
        round_trips=round_trips,
        commands=7 * round_trips,
        script_usec=30 * round_trips,
        cpu_seconds=cpu_seconds,
        idle_cpu_share=idle_cpu_share,
    )


def test_exact_capacity_is_the_target_over_the_cpu_per_call() -> None:
    assert model.largest_fleet(COSTS, "exact", rate=100) == pytest.approx(350)  # 0.7 / 2 ms


def test_capacity_is_linear_in_shards() -> None:
    one = model.largest_fleet(COSTS, "exact", rate=100)
    assert model.largest_fleet(COSTS, "exact", rate=100, shards=3) == pytest.approx(3 * one)


@pytest.mark.parametrize(
    ("per_breaker_rate", "carried"),
    [(0.1, 1), (6.25, 1), (10.0, 2), (20.0, 2), (21.0, 3), (60.0, 4), (100.0, 6)],
    ids=[
        "rare",
        "the-bench-rate",
        "once-per-interval-and-half-a-poll",
        "one-per-interval",
        "just-over",
        "float-edge",
        "busy",
    ],
)
def test_a_flush_carries_one_intervals_calls_and_the_flushing_one(
    per_breaker_rate: float, carried: int
) -> None:
    assert model.calls_per_flush(per_breaker_rate, 0.05) == carried


def test_batched_load_counts_flushes_not_calls() -> None:
    # 400 calls/s over 16 breakers: 25 each, so 3 calls per flush, 1333 flushes/s.
    cores = model.redis_cores(COSTS, "batched", processes=10, rate=400)
    assert cores == pytest.approx(10 * 400 / 3 * 25e-6)
    # 100 calls/s: 6.25 each, slower than the follower: a flush per call, as exact.
    cores = model.redis_cores(COSTS, "batched", processes=10, rate=100)
    assert cores == pytest.approx(10 * 100 / 1 * 25e-6)


def test_batched_load_is_bounded_by_processes_times_breakers() -> None:
    bound = 16 * (1 / 0.05) * 25e-6  # one process: 16 breakers, 20 flushes/s at most
    loads = [model.redis_cores(COSTS, "batched", 1, rate) for rate in (1e3, 1e5, 1e7)]
    assert loads == sorted(loads)
    assert all(load < bound for load in loads)
    assert loads[-1] == pytest.approx(bound, rel=1e-3)


def test_cpu_per_call_leaves_out_what_an_idle_redis_spends() -> None:
    run = a_run(calls=1000, cpu_seconds=0.11, idle_cpu_share=0.01)
    assert run.cpu_per_call == pytest.approx(100e-6)


def test_costs_come_from_each_modes_run_with_the_most_round_trips() -> None:
    runs = [
        a_run("exact", 1, calls=100, round_trips=100, cpu_seconds=0.02, idle_cpu_share=0.0),
        a_run("exact", 4, calls=400, round_trips=400, cpu_seconds=0.02, idle_cpu_share=0.0),
        a_run("batched", 4, calls=400, round_trips=200, cpu_seconds=0.01, idle_cpu_share=0.0),
    ]
    costs = model.costs_from(runs)
    assert costs.exact_per_call == pytest.approx(0.02 / 400)
    assert costs.batched_per_flush == pytest.approx(0.01 / 200)


@pytest.mark.parametrize(
    ("cores", "primaries"),
    [(0.0, 1), (0.7, 1), (0.71, 2), (2.1, 3)],
    ids=["idle", "at-target", "just-over", "three"],
)
def test_primaries_needed_round_up_at_the_target(cores: float, primaries: int) -> None:
    assert model.shards_needed(cores) == primaries


@pytest.mark.parametrize(
    ("slot", "shard"),
    [(0, 0), (5460, 0), (5461, 1), (10922, 1), (10923, 2), (16383, 2)],
)
def test_slots_split_over_three_primaries_as_redis_cli_does(slot: int, shard: int) -> None:
    assert model.shard_of(slot, 3) == shard


def test_the_busiest_primary_holds_the_most_breakers() -> None:
    assert model.busiest_shard([0, 1, 5461, 16383], 3) == 2


def test_the_section_gives_the_capacity_and_links_the_plot() -> None:
    runs = (a_run("exact"), a_run("batched", round_trips=500, cpu_seconds=0.06))
    measured = Measured(runs, rate=100.0, seconds=1.0, slots=(0, 6000, 12000))
    text = "\n".join(model.section(measured, "docs/fleet-model.png"))
    assert "## Fleet-scale model" in text
    assert "**7,000 guarded calls/s**" in text  # 0.7 / 100 µs
    assert "![Redis load against fleet size](docs/fleet-model.png)" in text


@pytest.mark.slow  # matplotlib: seconds to import, a minute on a machine with no font cache
def test_the_plot_is_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    runs = (a_run("exact"), a_run("batched", round_trips=500, cpu_seconds=0.06))
    path = tmp_path / "docs" / "fleet-model.png"
    assert model.plot(Measured(runs, rate=100.0, seconds=1.0, slots=()), path)
    assert path.read_bytes().startswith(b"\x89PNG")


@pytest.mark.slow
def test_a_tiny_fleet_sends_one_fcall_per_exact_call_and_no_more_batched() -> None:
    with BenchRedis() as server:
        measured = model.measure(server, processes=(1, 2), rate=100.0, seconds=0.5)
    assert [(run.processes, run.mode) for run in measured.runs] == [
        (1, "exact"),
        (1, "batched"),
        (2, "exact"),
        (2, "batched"),
    ]
    for run in measured.runs:
        assert 0 < run.calls <= run.processes * 50
        assert run.cpu_seconds >= 0
        if run.mode == "exact":
            assert run.round_trips == run.calls
        else:  # 6.25 calls/s per breaker: the follower flushes each batch on time
            assert 0 < run.round_trips <= run.calls
    assert len(measured.slots) == model.BREAKERS
