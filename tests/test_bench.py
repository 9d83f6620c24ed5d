"""``python -m fastpool bench``: timing protocol, the result document and the CLI.

Only what the benchmark reports is checked here, never how fast anything is.
"""

from __future__ import annotations

import json

import pytest

import fastpool
from fastpool import bench

#: A tiny run: a few samples of a few milliseconds.
TINY = bench.Settings(budget=0.005, min_repeats=2, max_repeats=3, numpy_repeats=1)
SMALL_CASE = "32x64x5x5->7 NCHW"


def _recording_runner(log: list[str], name: str) -> bench.Runner:
    return bench.Runner(lambda: log.append(name))


def test_measure_together_samples_in_turns():
    log: list[str] = []
    runners = [_recording_runner(log, "a"), _recording_runner(log, "b")]
    timings = bench.measure_together(
        runners, warmup=[False, False], budget=0.0, min_repeats=4, max_repeats=4
    )
    assert [t.calls for t in timings] == [log.count("a"), log.count("b")]
    assert all(t.seconds > 0 for t in timings)
    # after each runner's first (sizing) call, the samples alternate: a's block, b's block
    blocks = [name for i, name in enumerate(log) if i == 0 or log[i - 1] != name]
    assert blocks[:2] == ["a", "b"] and len(blocks) >= 2 * 4
    assert all(x != y for x, y in zip(blocks, blocks[1:], strict=False))


def test_measure_warmup_call_is_not_counted():
    log: list[str] = []
    t = bench.measure(
        _recording_runner(log, "a"), warmup=True, budget=0.0, min_repeats=3, max_repeats=3
    )
    assert len(log) == t.calls + 1


def test_cold_samples_each_follow_an_eviction(monkeypatch):
    log: list[str] = []
    monkeypatch.setattr(bench, "evict_caches", lambda: log.append("evict"))
    runners = [_recording_runner(log, "a"), _recording_runner(log, "b")]
    timings = bench.measure_together(
        runners, warmup=[False, False], budget=0.0, min_repeats=3, max_repeats=3, cold=True
    )
    # the sizing calls, then samples of one call, each right after an eviction, in turns
    assert log == ["a", "b"] + ["evict", "a", "evict", "b"] * 3
    assert [t.calls for t in timings] == [4, 4]


def test_evict_caches_reads_twice_the_caches(monkeypatch):
    assert bench._cache_bytes() > 0
    monkeypatch.setattr(bench, "_evict_buffer", None)
    monkeypatch.setattr(bench, "_cache_bytes", lambda: 48 * 2**20)
    read = []
    monkeypatch.setattr(bench.np, "sum", lambda a: read.append(a.nbytes))
    for cpus in (1, 3):
        read.clear()
        monkeypatch.setattr(bench, "_cpu_count", lambda cpus=cpus: cpus)
        bench.evict_caches()
        assert bench._evict_buffer.nbytes == 96 * 2**20
        assert len(read) == cpus and sum(read) == 96 * 2**20  # a part per CPU, all of it
    kept = bench._evict_buffer
    bench.evict_caches()
    assert bench._evict_buffer is kept  # made once
    monkeypatch.setattr(bench, "_evict_buffer", None)
    monkeypatch.setattr(bench, "_cache_bytes", lambda: 2**40)
    monkeypatch.setattr(bench, "EVICT_MAX_BYTES", 128 * 2**20)
    bench.evict_caches()
    assert bench._evict_buffer.nbytes == 128 * 2**20  # capped


def test_cold_run_is_recorded(monkeypatch):
    evictions = []
    monkeypatch.setattr(bench, "evict_caches", lambda: evictions.append(1))
    cases = bench.select_cases(cases_regex=SMALL_CASE)
    monkeypatch.setattr(bench, "COLD_MIN_BYTES", cases[0].traffic("avg", 4) + 1)
    doc = bench.run(cases, ["avg"], ["numpy"], settings=TINY, threads=1, progress=False, cold=True)
    assert doc["meta"]["cold"] and not evictions  # a case smaller than that runs warm
    assert "cold: the CPU caches emptied" in bench.format_table(doc)
    monkeypatch.setattr(bench, "COLD_MIN_BYTES", cases[0].traffic("avg", 4))
    bench.run(cases, ["avg"], ["numpy"], settings=TINY, threads=1, progress=False, cold=True)
    assert evictions


def test_run_document_and_speedups():
    cases = bench.select_cases(cases_regex=SMALL_CASE)
    assert [c.name for c in cases] == [SMALL_CASE]
    doc = bench.run(
        cases,
        ["avg", "max_backward"],
        ["numpy", "nonesuch-peer"],
        settings=TINY,
        threads=1,
        progress=False,
    )
    rows = doc["results"]
    assert {(r["op"], r["backend"]) for r in rows} == {("avg", "numpy"), ("max_backward", "numpy")}
    for r in rows:
        assert r["case"] == SMALL_CASE and r["ms"] > 0 and r["gbps"] > 0
        assert r["bytes"] == cases[0].traffic(r["op"], 4)
    assert "nonesuch-peer" in doc["skipped"]
    assert doc["meta"]["threads"] == 1 and doc["meta"]["dtype"] == "float32"
    json.dumps(doc)  # the --json document is plain JSON
    table = bench.format_table(doc)
    assert SMALL_CASE in table and "max_backward" in table


def test_run_against_torch_reports_speedups():
    pytest.importorskip("torch")
    backend = fastpool.available_backends()[0]
    cases = bench.select_cases(cases_regex=SMALL_CASE)
    doc = bench.run(
        cases, ["avg"], [backend, bench.TORCH], settings=TINY, threads=1, progress=False
    )
    by = {r["backend"]: r for r in doc["results"]}
    assert set(by) == {backend, bench.TORCH}
    assert by[backend]["vs_torch"] == pytest.approx(by[bench.TORCH]["ms"] / by[backend]["ms"])
    assert doc["geomean"][backend]["vs_torch_n"] == 1
    assert SMALL_CASE in bench.format_markdown(doc)


def test_cli_list_and_bad_arguments(capsys):
    assert bench.main(["--list"]) == 0
    assert SMALL_CASE in capsys.readouterr().out
    assert bench.main(["--op", "median", "--no-torch"]) == 2
    assert "unknown op median" in capsys.readouterr().err
    assert bench.main(["--cases", "no such case", "--no-torch"]) == 2
    assert "no case matches" in capsys.readouterr().err
    assert bench.main(["--backend", "tpu", "--no-torch"]) == 2
    assert "unknown backend 'tpu'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--cases", "["], "not a regular expression"),
        (["--threads", "0"], "expected a positive int"),
        (["--dims", "2,4"], "expected 1, 2 and/or 3"),
        (["--load", "/nonexistent/bench.json"], "No such file"),
    ],
)
def test_cli_rejects_malformed_options_with_a_message(capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        bench.main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_info_takes_no_arguments(capsys):
    from fastpool.__main__ import main

    with pytest.raises(SystemExit):
        main(["info", "--bogus"])
    assert "info takes no arguments" in capsys.readouterr().err


def test_cli_json_roundtrip(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(bench, "QUICK", TINY)
    out = tmp_path / "bench.json"
    argv = [
        "--quick",
        "--cases",
        SMALL_CASE,
        "--op",
        "avg",
        "--backend",
        "numpy",
        "--no-torch",
        "--threads",
        "1",
        "--json",
        str(out),
    ]
    assert bench.main(argv) == 0
    first = capsys.readouterr().out
    assert SMALL_CASE in first and f"wrote {out}" in first
    assert bench.main(["--load", str(out), "--markdown"]) == 0
    again = capsys.readouterr().out
    assert SMALL_CASE in again and "| case |" in again
