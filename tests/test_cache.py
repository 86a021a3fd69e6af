"""The score cache: a second audit performs no forward pass; interrupted sweeps resume."""

import threading

import pytest
import torch

import core
from core.attacks import SimA, SimAMC
from core.audit import run_audit
from core.batching import best_batch_size, best_settings, forget, measure, torch_threads
from core.cache import ScoreCache


class Counter:
    """Wraps a model's network call to count the samples it evaluates."""

    def __init__(self, model):
        self.samples = 0
        self._raw = model._raw
        model._raw = self

    def __call__(self, x, t):
        self.samples += x.shape[0]
        return self._raw(x, t)


@pytest.fixture
def model(tiny_model_dir):
    return core.load_model(tiny_model_dir)


def _sets(n=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 8, 8, generator=g) * 2 - 1, torch.rand(n, 3, 8, 8, generator=g) * 2 - 1


def test_second_audit_performs_no_forward_pass(model, tmp_path):
    members, nonmembers = _sets()
    cache = ScoreCache(tmp_path)
    first = run_audit(model, members, nonmembers, timesteps=[0, 20, 40], n_bootstrap=20, cache=cache, batch_size=8)
    counter = Counter(model)
    again = run_audit(model, members, nonmembers, timesteps=[0, 20, 40], n_bootstrap=20, cache=ScoreCache(tmp_path), batch_size=8)
    assert counter.samples == 0
    assert (again.statistics == first.statistics).all()
    # a grid that adds one timestep computes only the new column
    run_audit(model, members, nonmembers, timesteps=[0, 20, 40, 60], n_bootstrap=20, cache=cache, batch_size=8)
    assert counter.samples == 20
    assert cache.info().entries == 80


def test_interrupted_sweep_resumes_where_it_stopped(model, tmp_path):
    x0 = _sets(12)[0]
    cache = ScoreCache(tmp_path)
    calls = []

    def stop_after_two_batches(done, total):
        calls.append(done)
        if len(calls) == 3:  # the first call reports the cached count before any batch
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        SimA().sweep(model, x0, [10, 30], batch_size=5, cache=cache, progress=stop_after_two_batches)
    assert cache.info().entries == 10
    counter = Counter(model)
    resumed = SimA().sweep(model, x0, [10, 30], batch_size=5, cache=cache)
    assert counter.samples == 24 - 10
    torch.testing.assert_close(resumed, SimA().sweep(model, x0, [10, 30], batch_size=5), rtol=1e-6, atol=1e-9)


def test_keys_separate_attack_settings_and_seeds(model, tmp_path):
    x0 = _sets(4)[0]
    cache = ScoreCache(tmp_path)
    a = SimAMC(k=2).sweep(model, x0, [50], seed=1, cache=cache)
    b = SimAMC(k=2).sweep(model, x0, [50], seed=2, cache=cache)
    c = SimAMC(k=3).sweep(model, x0, [50], seed=1, cache=cache)
    assert not torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(SimAMC(k=2).sweep(model, x0, [50], seed=1, cache=cache), a)
    assert cache.info().entries == 12


def test_info_and_clear(tmp_path):
    cache = ScoreCache(tmp_path / "c")
    assert cache.info().entries == 0
    cache.put("m", "a", [("s1", 1, 0.5), ("s2", 1, 0.25)])
    assert cache.get("m", "a", ["s1", "s2", "s3"], [1]) == {("s1", 1): 0.5, ("s2", 1): 0.25}
    assert "2 cached statistics" in cache.info().describe()
    assert cache.clear() == 2 and cache.info().entries == 0


def test_concurrent_sessions_get_what_each_would_get_alone(model, tmp_path):
    """Eight threads share one model and one cache file; each result equals a solo run."""
    sets = [_sets(6, seed=i)[0] for i in range(8)]
    alone = [SimA().sweep(model, x, [5, 25], batch_size=4) for x in sets]
    cache = ScoreCache(tmp_path)
    results, errors = [None] * 8, []

    def work(i):
        try:
            results[i] = SimA().sweep(model, sets[i], [5, 25], batch_size=4, cache=cache)
        except Exception as exc:  # surfaced below; a thread would swallow it
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    for got, want in zip(results, alone):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9)


def test_many_sessions_opening_a_new_cache_at_once_all_succeed(tmp_path):
    """Opening a fresh file switches it to WAL, which SQLite refuses outright while another
    connection does the same; before setup was serialised this failed about once in 200."""
    errors = []
    for trial in range(300):
        cache = ScoreCache(tmp_path / str(trial))
        start = threading.Barrier(12)

        def work():
            start.wait()
            try:
                cache.put("m", "a", [("s", 1, 0.5)])
                assert cache.get("m", "a", ["s"], [1]) == {("s", 1): 0.5}
            except Exception as exc:  # surfaced below; a thread would swallow it
                errors.append(exc)

        threads = [threading.Thread(target=work) for _ in range(12)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    assert not errors


def test_batch_size_calibration_is_measured_once(model):
    rates = measure(model, candidates=(2, 4), repeats=1)
    assert set(rates) == {2, 4} and all(r > 0 for r in rates.values())
    size, threads = best_settings(model)
    assert size in (8, 16, 32, 64, 128) and 1 <= threads <= torch.get_num_threads()
    counter = Counter(model)
    assert best_batch_size(model) == size and counter.samples == 0


def test_forgotten_calibrations_are_measured_again(model):
    best_settings(model)
    assert forget() >= 1 and forget() == 0
    counter = Counter(model)
    best_settings(model)
    assert counter.samples > 0


def test_thread_setting_is_restored():
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def _store(model, value) -> None:
    """Put ``value`` on disk as the model's calibration and drop the in-memory copy."""
    import json

    from core import batching
    from core.cache import default_dir

    forget()
    default_dir().mkdir(parents=True, exist_ok=True)
    (default_dir() / batching.FILE_NAME).write_text(json.dumps({batching._key(model): value}))


def test_calibrations_of_an_older_format_or_past_their_age_are_measured_again(model):
    import time

    from core import batching

    for stale in ([16, 1], [16, 1, 500.0, time.time() - batching.MAX_AGE_S - 60]):
        _store(model, stale)
        counter = Counter(model)
        found = batching.calibration(model)
        assert counter.samples > 0 and found.measured_at > time.time() - 60
        model._raw = counter._raw
    _store(model, [16, 1, 500.0, time.time() - 60])  # fresh: used as it is
    counter = Counter(model)
    assert batching.calibration(model) == batching.Calibration(16, 1, 500.0, pytest.approx(time.time() - 60, abs=5))
    assert counter.samples == 0


def test_a_sweep_much_slower_than_its_calibration_measures_it_again(model, monkeypatch):
    import time

    from core import batching

    # A calibration that promises far more than this machine can do, as one measured on a
    # quiet machine looks when the machine is busy.
    _store(model, [4, 1, 1e12, time.time()])
    monkeypatch.setattr(batching, "MIN_CHECK_SECONDS", 0.0)
    counter = Counter(model)
    SimA().sweep(model, _sets(8)[0], [5, 25])
    assert counter.samples > 16, "the sweep did not measure its calibration again"
    fresh = batching.calibration(model)
    assert fresh.rate < 1e12 and fresh.measured_at > time.time() - 60
    # a calibration the sweep lives up to is left alone
    counter.samples = 0
    assert batching.check_rate(model, evaluations=int(10 * fresh.rate), seconds=10.0) is None and counter.samples == 0
    assert batching.check_rate(model, evaluations=1, seconds=batching.MIN_CHECK_SECONDS + 1) is not None


def test_a_sweep_below_the_full_thread_count_tries_it_and_keeps_it_when_faster(model, monkeypatch):
    import time

    from core import batching

    monkeypatch.setattr(batching, "MAX_THREADS", 2)
    _store(model, [4, 1, 100.0, time.time()])  # chosen on a busy machine: one thread
    with torch_threads(1):
        tuner = batching.ThreadTuner(model, 1)
        for _ in range(batching.PROBE_AFTER):
            tuner.observe(100, 1.0)
        assert tuner.probing and torch.get_num_threads() == 2, "no probe at the full thread count"
        tuner.observe(100, 0.5)  # twice as fast: the machine is quiet now
        assert tuner.threads == 2 and torch.get_num_threads() == 2
        assert batching.calibration(model).threads == 2
        assert batching.calibration(model).batch_size == 4

        _store(model, [4, 1, 100.0, time.time()])
        torch.set_num_threads(1)
        tuner = batching.ThreadTuner(model, 1)
        for _ in range(batching.PROBE_AFTER):
            tuner.observe(100, 1.0)
        tuner.observe(100, 0.95)  # within the margin: not worth a switch
        assert tuner.threads == 1 and torch.get_num_threads() == 1 and batching.calibration(model).threads == 1
        for _ in range(batching.PROBE_EVERY - 1):
            tuner.observe(100, 1.0)
        assert not tuner.probing
        tuner.observe(100, 1.0)
        assert tuner.probing, "the probe is not repeated"


def test_a_sweep_at_the_full_thread_count_never_probes_and_restores_the_callers_threads(model, monkeypatch):
    import time

    from core import batching

    monkeypatch.setattr(batching, "MAX_THREADS", 1)
    _store(model, [4, 1, 1e3, time.time()])
    tuner = batching.ThreadTuner(model, 1)
    for _ in range(2 * batching.PROBE_EVERY):
        tuner.observe(100, 0.1)
    assert not tuner.probing
    before = torch.get_num_threads()
    with torch_threads(before):
        torch.set_num_threads(before + 1)  # as a tuner switching inside the block does
    assert torch.get_num_threads() == before
