"""The attack benchmark: its ordering verdict, a tiny end-to-end run, and committed tables that match their data."""

import functools
import importlib
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    """A benchmark script imported as a module (the scripts import their neighbour common.py)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        yield importlib.import_module(name)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


@pytest.fixture(scope="module")
def bench():
    yield from _script("attacks")


def _rows(**auc):
    return [{"attack": name, "auc": {"value": value}} for name, value in auc.items()]


def test_rows_without_per_sample_scores_claim_no_ordering_whatever_their_point_aucs(bench):
    partial = _rows(sima=0.55, pia=0.59, secmi=0.55, loss=0.52)  # PIA above SimA by point AUC only
    assert bench.ordering_short(partial, []) == "not tested (no per-sample scores stored)"
    assert bench.ordering_note(partial, []).endswith("so no ordering of its attacks is claimed.")
    published = bench.headline({"models": {}})
    assert published.count("not tested (published point AUCs)") == len(bench.PUBLISHED)


def _tested(a, b, low, high):
    return {"attack_a": a, "attack_b": b, "auc_difference": {"value": (low + high) / 2, "ci_low": low, "ci_high": high}}


def test_the_ordering_verdict_with_paired_tests_orders_a_pair_only_when_its_ci_excludes_zero(bench):
    # By point AUC PIA is above SimA, but the paired CI covers 0: not a reversal.
    rows = _rows(sima=0.90, pia=0.91, secmi=0.85, loss=0.80, pfami=0.70)
    tests = [_tested("sima", "pia", -0.03, 0.01), _tested("sima", "secmi", -0.01, 0.05)]
    tests += [_tested(hi, lo, 0.02, 0.2) for hi in ("sima", "pia", "secmi") for lo in ("loss", "pfami")]
    assert bench.ordering_short(rows, tests) == "yes"
    assert "holds here by a paired bootstrap" in bench.ordering_note(rows, tests)
    reversed_ = [_tested("sima", "pia", -0.05, -0.01)] + tests[1:]
    assert bench.ordering_short(rows, reversed_) == "no: SimA < PIA"
    unshown = tests[:-1] + [_tested("secmi", "pfami", -0.01, 0.1)]
    assert bench.ordering_short(rows, unshown) == "not shown: SecMI ≈ PFAMI"
    assert "not distinguishable at 95%" in bench.ordering_note(rows, unshown)
    assert bench.ordering_short(rows, tests[:-1]) == "partly; not compared: SecMI vs PFAMI"
    assert bench.ordering_short(_rows(sima=0.9, pia=0.8), [_tested("sima", "pia", 0.01, 0.2)]) == (
        "partly: SecMI, Loss, PFAMI not run")


def test_a_tiny_run_writes_every_attack_row_and_its_costs(bench, tmp_path, monkeypatch):
    from core.attacks import SecMI

    doc = tmp_path / "benchmarks.md"
    monkeypatch.setattr(bench, "RESULTS", tmp_path)
    monkeypatch.setattr(bench, "replace_section", functools.partial(bench.replace_section, path=doc))
    argv = ["--quick", "--models", "digits-empirical", "--attacks", "sima,secmi,loss", "--bootstrap", "20"]
    assert bench.main(argv) == 0
    payload = json.loads((tmp_path / "attacks-quick.json").read_text())
    entry = payload["models"]["digits-empirical"]
    assert [r["attack"] for r in entry["attacks"]] == ["sima", "secmi", "loss"]
    assert entry["n_members"] == entry["n_heldout"] == 100 and entry["timesteps"] == [0, 20, 40, 60, 80, 100]
    secmi = entry["attacks"][1]
    assert secmi["queries_per_sample_grid"] == SecMI().queries_for_grid(entry["timesteps"])
    assert secmi["queries_per_sample_at_t"] == SecMI().queries_per_sample(secmi["chosen_t"])
    for row in entry["attacks"]:
        assert 0 <= row["auc"]["value"] <= 1 and row["s_per_1000_images_at_t"] > 0
    text = doc.read_text()
    assert "### digits-empirical" in text and text.count("\n| sima |") == 1 and "PFAMI not run" in text
    # Every attack is perfect on the exact memoriser: the paired tests find no difference to order.
    pairs = {(c["attack_a"], c["attack_b"]): c for c in entry["comparisons"]}
    assert set(pairs) == {("sima", "secmi"), ("sima", "loss"), ("secmi", "loss")}
    assert all(c["verdict"] == "not distinguishable at 95%" and c["n_nonmembers"] == 50 for c in pairs.values())
    assert "| SimA vs Loss | +0.000 [+0.000, +0.000] | 1.000 |" in text
    stored = bench.load_scores(tmp_path / "attack_scores-quick.npz")
    assert len(stored["digits-empirical|sima"]) == len(stored["digits-empirical|labels"]) == 100


def test_the_captioned_demo_is_audited_on_its_own_captions(bench, tmp_path, monkeypatch):
    doc = tmp_path / "benchmarks.md"
    monkeypatch.setattr(bench, "RESULTS", tmp_path)
    monkeypatch.setattr(bench, "replace_section", functools.partial(bench.replace_section, path=doc))
    argv = ["--quick", "--models", "digits-sd-captioned", "--attacks", "sima,gap", "--timesteps", "20:40:20",
            "--bootstrap", "20"]
    assert bench.main(argv) == 0
    entry = json.loads((tmp_path / "attacks-quick.json").read_text())["models"]["digits-sd-captioned"]
    # run_audit records "caption" only when both sets were given a condition, so this fails on the empty prompt
    assert [(r["attack"], r["condition"]) for r in entry["attacks"]] == [("sima", "caption"), ("gap", "caption")]
    assert entry["condition"].startswith("caption: each image's own")
    assert "audited in caption mode" in doc.read_text()


def test_the_committed_attack_tables_are_rendered_from_the_committed_results(bench):
    results = ROOT / "benchmarks" / "results" / "attacks.json"
    if not results.is_file():
        pytest.skip("benchmarks/results/attacks.json is not committed yet; run python benchmarks/attacks.py")
    payload = json.loads(results.read_text())
    assert bench.markdown(payload).strip() in (ROOT / "docs" / "benchmarks.md").read_text()
    assert bench.headline(payload) in (ROOT / "README.md").read_text()


def test_the_committed_paired_comparisons_come_from_the_committed_scores(bench):
    from core.metrics import auc

    results = ROOT / "benchmarks" / "results" / "attacks.json"
    if not results.is_file():
        pytest.skip("benchmarks/results/attacks.json is not committed yet; run python benchmarks/attacks.py")
    payload = json.loads(results.read_text())
    stored = bench.load_scores(bench.scores_path(False))
    compared = [name for name, entry in payload["models"].items() if entry.get("comparisons")]
    assert compared, "no model has paired comparisons"
    for name in compared:
        labels = stored[f"{name}|labels"]
        for c in payload["models"][name]["comparisons"]:
            a, b = (auc(scores=stored[f"{name}|{k}"], labels=labels) for k in (c["attack_a"], c["attack_b"]))
            assert c["auc_difference"]["value"] == pytest.approx(a - b, abs=1e-12)
    # The whole bootstrap again for one model (all of them would take too long for the suite).
    first = json.loads(json.dumps({**payload, "models": {compared[0]: payload["models"][compared[0]]}}))
    bench.add_comparisons(first, bench.scores_path(False), first["models"][compared[0]]["comparisons"][0]["n_bootstrap"],
                          payload["seed"])
    assert first["models"][compared[0]]["comparisons"] == payload["models"][compared[0]]["comparisons"]


@pytest.fixture(scope="module")
def speed():
    yield from _script("speed")


def test_speed_targets_report_the_worst_model_and_fail_honestly(speed):
    fast = {"parameters": 10, "sima_over_bare": 1.2, "naive_loop_images_per_s": 90.0, "sima_sweep_images_per_s": 100.0,
            "cached_rerun_speedup": 300.0}
    slow = {**fast, "sima_over_bare": 0.85, "cached_rerun_speedup": 40.0}
    scale = [{"n": 1000, "peak_memory_mb": 500.0}, {"n": 20000, "peak_memory_mb": 510.0}]
    met = [m for _, _, m in speed.targets({"models": [fast], "scale": scale})]
    assert met == [True, True, True, True]
    rows = speed.targets({"models": [fast, slow], "scale": [scale[0], {"n": 20000, "peak_memory_mb": 700.0}]})
    assert [m for _, _, m in rows] == [False, True, False, False]
    assert rows[0][1] == "0.85" and rows[2][1] == "40x" and "+40.0%" in rows[3][1]
    closed_form = {**slow, "parameters": 0}  # the empirical denoiser: shown, not counted
    assert [m for _, _, m in speed.targets({"models": [fast, closed_form], "scale": scale})] == [True] * 4


@pytest.fixture(scope="module")
def collection_bench():
    yield from _script("collection")


def test_the_committed_collection_section_is_rendered_from_the_committed_results(collection_bench):
    results = ROOT / "benchmarks" / "results" / "collection.json"
    if not results.is_file():
        pytest.skip("benchmarks/results/collection.json is not committed yet; run python benchmarks/collection.py")
    payload = json.loads(results.read_text())
    assert collection_bench.markdown(payload).strip() in (ROOT / "docs" / "benchmarks.md").read_text()
    null, power = payload["null_fpr"], payload["power"]
    assert len({r["model"] for r in null}) >= 2 and {r["n"] for r in null} >= {5, 20, 100}
    assert {r["alpha"] for r in null} >= {0.05, 0.01} and min(r["draws"] for r in null) >= 1000
    assert all(set(r) >= {"model", "n", "alpha", "fpr", "draws"} for r in null)
    assert all(set(r) >= {"model", "n", "alpha", "power"} for r in power)
    # The test's true size (no simulation noise) is alpha up to the normal approximation's error.
    assert all(r["exact_fpr"] <= r["alpha"] * 1.02 for r in null)


def test_the_collection_benchmark_draws_disjoint_collections_and_references(collection_bench):
    pool = np.arange(30, dtype=float)
    p = collection_bench.draw_p_values(pool, None, 5, 200, np.random.default_rng(0))
    assert p.shape == (200,) and ((0 < p) & (p <= 1)).all()
    # Collections of the top of a pool against its bottom are always flagged.
    assert (collection_bench.draw_p_values(pool[20:], pool[:20], 5, 20, np.random.default_rng(0)) < 0.01).all()


def test_the_collection_family_check_counts_deviations_in_standard_errors(collection_bench):
    se = math.sqrt(0.05 * 0.95 / 1000)
    rows = [{"fpr": 0.05 + z * se, "alpha": 0.05, "se": se} for z in (0.0, -1.0, 2.5)]
    check = collection_bench.family_check(rows)
    assert check["z"] == [0.0, -1.0, 2.5] and check["max_abs_z"] == pytest.approx(2.5)
    assert check["z_family"] == pytest.approx(2.3940, abs=1e-4)  # the normal quantile at 1 - 0.05 / 6
    assert not check["within_family"]
    assert check["p_any_outside"] == pytest.approx(1 - (1 - 0.0455) ** 3, abs=1e-3)


@pytest.fixture(scope="module")
def latent_bench():
    yield from _script("latent")


def test_the_committed_latent_study_is_fair_complete_and_rendered(latent_bench):
    results = ROOT / "benchmarks" / "results" / "latent.json"
    payload = json.loads(results.read_text())
    assert latent_bench.markdown(payload).strip() in (ROOT / "docs" / "benchmarks.md").read_text()
    keys = {"auc", "ci_low", "ci_high", "recon_mse", "quality"}
    rows = payload["rows"]
    assert len(rows) >= 5 and all(set(r) >= keys | {"beta"} for r in rows)
    assert set(payload["pixel"]) >= keys
    betas = sorted(r["beta"] for r in rows)
    assert math.log10(betas[-1] / betas[0]) >= 4  # at least four orders of magnitude
    assert all(r["ci_low"] <= r["auc"] <= r["ci_high"] for r in rows + [payload["pixel"]])
    # each row's model is the config the script trains now (same members, same budget as the pixel demo)
    pixel = json.loads((ROOT / "assets" / "models" / "digits-ddpm-memorising" / "train.json").read_text())
    for beta in betas:
        cfg = latent_bench.config(beta)
        assert cfg["train"] == pixel["train"] and cfg["data"] == pixel["data"]
        assert cfg["vae_train"]["images"] == 397 and cfg["vae_train"]["reconstruction"] == "mean"


@pytest.fixture(scope="module")
def sima_mc_bench():
    yield from _script("sima_mc")


def test_the_committed_sima_mc_reduction_section_matches_its_results_and_the_default(sima_mc_bench):
    from core.attacks import SimAMC

    payload = json.loads((ROOT / "benchmarks" / "results" / "sima_mc.json").read_text())
    assert sima_mc_bench.markdown(payload).strip() in (ROOT / "docs" / "benchmarks.md").read_text()
    verdicts = [r["comparison"]["verdict"] for r in payload["rows"]]
    assert len(payload["rows"]) >= 5 and "mean_norm > norm_of_mean" not in verdicts
    assert SimAMC().reduce == "norm_of_mean"  # the default the measurement supports
