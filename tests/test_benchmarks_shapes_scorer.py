"""The scorer benchmark reuses its per-family rates only while nothing they depend on changed."""

import benchmarks.shapes_scorer as bench
import pytest


@pytest.fixture
def counted(monkeypatch):
    calls = []

    def fake_rates(cases, detectors):
        calls.append(cases)
        return {"clean": {name: {"correct": (cases, cases), "corrupted": (0, cases)} for name in detectors}}

    monkeypatch.setattr(bench, "family_rates", fake_rates)
    return calls


def test_rates_are_cached_under_the_detector_version(tmp_path, monkeypatch, counted):
    cache = tmp_path / "rates.json"
    key = bench.rates_key(3, "abc")
    first, _ = bench.cached_family_rates(3, {"new": None}, cache, key)
    again, _ = bench.cached_family_rates(3, {"new": None}, cache, key)
    assert first == again == {"clean": {"new": {"correct": (3, 3), "corrupted": (0, 3)}}}
    assert counted == [3]  # the second call read the file
    monkeypatch.setattr(bench, "DETECTOR_VERSION", "next")
    assert bench.rates_key(3, "abc") != key
    bench.cached_family_rates(3, {"new": None}, cache, bench.rates_key(3, "abc"))
    assert counted == [3, 3]


def test_without_a_cache_rates_are_computed(counted):
    bench.cached_family_rates(2, {"new": None}, None, "key")
    bench.cached_family_rates(2, {"new": None}, None, "key")
    assert counted == [2, 2]
