"""The intake benchmark's paced rounds: servers take turns within a round, and the table gives
each series' medians and how many of its runs kept the p99 under the target."""

from __future__ import annotations

import argparse
from typing import Any, cast

import pytest

import bench.intake as intake
from bench.harness import Processes, positive
from bench.intake import Run, Series, round_rows, summary_rows
from bench.load import LoadResult


def run(p50: float, p99: float, *, rate: float = 2000.0, server_cpu: float = 300.0) -> Run:
    load = LoadResult(
        requests=int(rate), seconds=1.0, statuses={202: int(rate)}, p50_ms=p50, p99_ms=p99
    )
    return Run(load, {"server": server_cpu, "redis": 100.0})


def test_each_round_runs_every_server_once_in_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    order: list[str] = []

    def measured(processes: Any, server: str, port: int, requests: list[bytes], **load: Any) -> Run:
        order.append(server)
        assert load["rate"] == 100
        assert len(requests) == 500  # five seconds at the offered rate
        return run(1.0, 2.0)

    monkeypatch.setattr(intake, "measured", measured)
    every = [Series("a", "a", 1, "at 100/s offered"), Series("b", "b", 2, "at 100/s offered")]
    args = argparse.Namespace(repeat=3, rate=100, connections=4, arrivals="even")
    intake.paced_rounds(cast(Processes, None), every, args)  # measured() is stubbed
    assert order == ["a", "b", "a", "b", "a", "b"]
    assert [len(series.runs) for series in every] == [3, 3]


def test_a_paced_series_is_summed_up_by_its_medians_and_its_runs_under_the_target() -> None:
    base = Series("baseline", "baseline", 1, runs=[run(5.0, 40.0, rate=4000.0)])
    ours = Series("ours", "web", 2, runs=[run(5.0, 12.0, rate=5000.0)], compared_with=base)
    paced = Series(
        "ours",
        "web",
        2,
        "at 2,000/s offered",
        [run(1.0, 4.0, server_cpu=250), run(3.0, 90.0, server_cpu=390), run(2.0, 14.0)],
    )
    rows = summary_rows([base, ours, paced], 15.0)
    assert rows[0][5] == "1.00"
    assert rows[1][:6] == ["ours", 5000, 5000.0, 5.0, 12.0, "1.25"]
    label, requests, _, p50, p99, ratio, cpu, under, statuses = rows[2]
    assert label == "ours at 2,000/s offered (median of 3 runs)"
    assert (requests, p50, p99, ratio) == (6000, 2.0, 14.0, "-")
    assert cpu == "300 / 100 / -"
    assert under == "2 of 3"
    assert statuses == "202:6000"


def test_a_flat_out_ratio_divides_by_the_baseline_of_the_same_set_up() -> None:
    """With a replica attached, ours is compared with the bare endpoint run with the replica
    attached too, not with the one run before the replica started."""
    alone = Series("baseline", "baseline", 1, runs=[run(5.0, 9.0, rate=4000.0)])
    attached = Series("baseline (replica)", "baseline", 1, runs=[run(5.0, 9.0, rate=3000.0)])
    ours = Series("ours (replica)", "web", 2, runs=[run(5.0, 9.0, rate=2700.0)])
    ours.compared_with = attached
    rows = summary_rows([alone, attached, ours], 15.0)
    assert [row[5] for row in rows] == ["1.00", "1.00", "0.90"]


def test_the_rounds_table_puts_each_runs_of_one_round_side_by_side() -> None:
    first = Series("a", "a", 1, runs=[run(1.0, 3.3), run(1.5, 20.0)])
    second = Series("b", "b", 2, runs=[run(2.0, 4.0), run(2.5, 5.0)])
    assert round_rows([first, second]) == [
        [1, "1.0 / 3.3", "2.0 / 4.0"],
        [2, "1.5 / 20.0", "2.5 / 5.0"],
    ]


@pytest.mark.parametrize("text", ["0", "-2", "two", "1.5"])
def test_counts_must_be_whole_numbers_of_at_least_one(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        positive(text)
    assert positive("3") == 3
