"""Issue 7 end to end: the hostile corpus through the loader and the real `sima score`, and the
audit protocol on empty, one-class, constant, tied and too-small sets."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import ImageFile

from core.audit import assemble_result, run_audit, split_halves
from core.data import IMAGE_EXTENSIONS, load_images
from core.errors import DataError
from core.models.empirical import EmpiricalDenoiser
from benchmarks.hostile import (
    LOADED,
    REFUSED,
    SIZE,
    CliRun,
    by_file,
    judge_cli,
    judge_loaded,
    score_all,
    score_each,
    write_corpus,
    write_models,
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile")
    return folder, write_corpus(folder)


# ----------------------------------------------------------------------------- the corpus itself


def test_corpus_covers_issue_7_and_is_small_generated_and_deterministic(corpus, tmp_path):
    folder, cases = corpus
    kinds = " | ".join(case.kind for case in cases)
    for needed in ["not an image", "empty file", "truncated PNG", "truncated JPEG", "decompression bomb",
                   "animated GIF", "APNG", "16-bit PNG", "CMYK JPEG", "palette with transparency",
                   "LA alpha", "RGBA alpha", "EXIF-rotated JPEG", "1x1 image", "extreme aspect ratio",
                   "greyscale to a colour model", "colour to a greyscale model", "text file renamed .png",
                   "zip bomb", "zip: bad member", ".npz: image with a NaN", ".npz of the wrong shape",
                   "huge-dimension BMP header"]:
        assert needed in kinds
    assert {case.outcome for case in cases} == {LOADED, REFUSED}
    sizes = {path.name: path.stat().st_size for path in folder.iterdir()}
    assert set(sizes) == set(by_file(cases))
    assert sum(sizes.values()) < 300_000
    for case in cases:
        if case.header_only:  # the bombs claim gigabytes but take kilobytes
            assert sizes[case.file] < 60_000
    write_corpus(tmp_path)
    assert all((tmp_path / name).read_bytes() == (folder / name).read_bytes() for name in sizes)


# ----------------------------------------------------------------------------- the loader


@pytest.mark.parametrize("channels", [3, 1])
def test_every_case_gets_exactly_its_expected_outcome(corpus, channels):
    folder, cases = corpus
    mine = [case for case in cases if case.channels == channels]
    files = [folder / name for name in by_file(mine)]
    assert judge_loaded(mine, load_images(files, channels=channels, size=SIZE), channels) == []
    for name, file_cases in by_file(mine).items():  # alone, without neighbours, the same
        alone = load_images([folder / name], channels=channels, size=SIZE)
        assert judge_loaded(file_cases, alone, channels) == [], name


def test_judge_notices_a_wrong_outcome(corpus):
    folder, cases = corpus
    good = next(case for case in cases if case.file == "good.png")
    loaded = load_images([folder / "good.png"], channels=3, size=SIZE)
    flipped = [replace(good, outcome=REFUSED, expect="x")]
    assert judge_loaded(flipped, loaded, 3) == ["good.png: expected refused, but it was loaded"]
    crashed = CliRun([], None, "", "Traceback (most recent call last):\n  ...\nKeyError: 'x'\n", 0.0)
    assert judge_cli(flipped, crashed) == [
        "crashed: a traceback was printed",
        "exit status None, expected 2",
        "no good image, but no 'error:' line at the end",
        "good.png: not named in a 'warning: skipped' line on stderr",
    ]


def test_bombs_are_refused_before_any_pixel_or_member_is_decoded(corpus, monkeypatch):
    folder, cases = corpus
    decoded: list[str] = []
    real_load, real_open = ImageFile.ImageFile.load, zipfile.ZipFile.open

    def load(image):
        decoded.append("pixels")
        return real_load(image)

    def open_member(archive, *args, **kwargs):
        decoded.append("member")
        return real_open(archive, *args, **kwargs)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    monkeypatch.setattr(zipfile.ZipFile, "open", open_member)
    bombs = [case for case in cases if case.header_only]
    assert len(bombs) >= 5
    loaded = load_images([folder / case.file for case in bombs], channels=3, size=SIZE)
    assert judge_loaded(bombs, loaded, 3) == [] and decoded == []
    # the spies do see decoding when it happens
    load_images([folder / "good.png", folder / "mixed.zip"], channels=3, size=SIZE)
    assert set(decoded) == {"pixels", "member"}


# ----------------------------------------------------------------------------- the command line


@pytest.fixture(scope="module")
def cli_runs(corpus, tmp_path_factory):
    """Each file alone (one driver process) and the whole corpus (one `python -m core.cli`
    process), run side by side: most of their time is starting torch and the model."""
    folder, cases = corpus
    model = write_models(tmp_path_factory.mktemp("models"))[3]
    jobs = [(folder / name, model) for name in by_file(cases)]
    jobs.append((folder, model))  # the folder itself: its files with image extensions
    jobs.append((folder / "missing.png", model))  # a typo on the command line
    files = [folder / name for name in by_file(cases)]
    with ThreadPoolExecutor(2) as pool:
        each = pool.submit(score_each, jobs, tmp_path_factory.mktemp("cache-each"))
        whole = pool.submit(score_all, files, model, tmp_path_factory.mktemp("cache-all"))
        return each.result(), whole.result()


@pytest.mark.slow
def test_sima_score_on_each_file_alone(corpus, cli_runs):
    folder, cases = corpus
    groups = by_file(cases)
    runs = cli_runs[0]
    codes = {name: run.code for name, run in zip(groups, runs)}
    expected = {name: 2 if any(c.outcome == REFUSED for c in group) else 0 for name, group in groups.items()}
    assert codes == expected
    assert not any("Traceback" in run.stdout + run.stderr for run in runs)
    assert {name: judge_cli(groups[name], run) for name, run in zip(groups, runs)} == {name: [] for name in groups}
    in_folder = [case for case in cases if Path(case.file).suffix in IMAGE_EXTENSIONS]
    assert len(in_folder) > 20 and judge_cli(in_folder, runs[-2]) == []
    missing = runs[-1]
    assert missing.code == 2 and "Traceback" not in missing.stderr
    assert missing.stderr.strip().splitlines() == [
        f"error: {folder / 'missing.png'}: the path does not exist; give a folder, a .zip, a .npz or an image file."
    ]


@pytest.mark.slow
def test_sima_score_on_the_whole_corpus_at_once(corpus, cli_runs):
    _, cases = corpus
    run = cli_runs[1]
    assert run.code == 2
    assert judge_cli(cases, run) == []
    assert "Traceback" not in run.stdout + run.stderr


# ----------------------------------------------------------------------------- audits


def assemble(statistics, labels, selection_half, select="auc", timesteps=None, n_bootstrap=50):
    statistics = np.asarray(statistics, dtype=np.float64)
    if statistics.ndim == 1:
        statistics = statistics[:, None]
    return assemble_result(
        statistics=statistics, labels=np.asarray(labels), selection_half=np.asarray(selection_half),
        timesteps=timesteps or list(range(0, 10 * statistics.shape[1], 10)), member_when="lower",
        select=select, seed=0, n_bootstrap=n_bootstrap, ids=[str(i) for i in range(len(labels))],
        attack="sima", attack_params={}, model_fingerprint="f", model_name="synthetic",
        queries_per_sample=1, wall_time_s=0.0,
    )


def balanced(n_per_class: int, seed: int = 0):
    labels = np.repeat([1, 0], n_per_class)
    return labels, split_halves(n_per_class, n_per_class, seed)


@pytest.mark.parametrize("n_members,n_nonmembers", [(0, 0), (0, 6), (6, 0), (1, 6), (6, 1)])
def test_audit_of_empty_tiny_or_one_class_sets_says_what_is_missing(n_members, n_nonmembers):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(6, 1, 4, 4, generator=g) * 2 - 1
    model = EmpiricalDenoiser(images)
    with pytest.raises(DataError) as caught:
        run_audit(model, images[:n_members], images[:n_nonmembers], timesteps=[10], n_bootstrap=0)
    message = str(caught.value)
    assert f"got {n_members} and {n_nonmembers}" in message and "at least 2 members and 2 non-members" in message


def test_smallest_audit_has_one_of_each_class_in_each_half():
    sel = split_halves(2, 2, seed=5)
    assert sel[:2].sum() == 1 and sel[2:].sum() == 1
    stats = np.array([0.0, 1.0, 0.5, 2.0])  # lower means member
    result = assemble(stats, [1, 1, 0, 0], sel, n_bootstrap=20)
    member, nonmember = stats[:2][~sel[:2]][0], stats[2:][~sel[2:]][0]
    assert result.metrics.auc.value == (1.0 if member < nonmember else 0.0)
    assert result.metrics.asr.value == (1.0 if member < nonmember else 0.5)
    assert result.metrics.tpr_at_1pct_fpr.value is None


def test_one_class_statistics_are_refused_by_the_audit():
    with pytest.raises(DataError, match="All 2 samples are members"):
        assemble([0.1, 0.2, 0.3, 0.4], [1, 1, 1, 1], [True, False, True, False])


def test_constant_statistics_give_chance_and_a_zero_tpr_not_a_false_signal():
    labels, sel = balanced(220)  # 110 report non-members: TPR@1%FPR is measurable
    result = assemble(np.full((440, 2), 3.25), labels, sel)
    assert result.chosen_t == 0  # a tie between timesteps goes to the earliest
    m = result.metrics
    assert m.auc.value == 0.5 and (m.auc.ci_low, m.auc.ci_high) == (0.5, 0.5)
    assert m.asr.value == 0.5
    # one threshold only: flagging everyone has FPR 1, so within 1% nothing is flagged
    assert m.tpr_at_1pct_fpr.value == 0.0 and m.tpr_at_1pct_fpr.realised_fpr == 0.0
    assert m.tpr_at_1pct_fpr.threshold > -3.25  # flags no one (scores are -3.25)
    assert all(row["auc"] == 0.5 and row["tpr_at_1pct_fpr"] == 0.0 for row in result.per_t)


def test_tied_statistics_match_the_pairwise_count():
    rng = np.random.default_rng(4)
    labels, sel = balanced(30)
    stats = rng.integers(0, 3, size=60).astype(float)  # three values: ties everywhere
    stats[labels == 1] -= rng.integers(0, 2, size=30)  # members a little lower
    result = assemble(stats, labels, sel)
    report = ~sel
    members, nonmembers = -stats[report & (labels == 1)], -stats[report & (labels == 0)]
    wins = (members[:, None] > nonmembers[None, :]).sum() + 0.5 * (members[:, None] == nonmembers[None, :]).sum()
    assert result.metrics.auc.value == pytest.approx(wins / (members.size * nonmembers.size), abs=1e-12)


@pytest.mark.parametrize("n_per_class,measurable", [(198, False), (200, True)])
def test_tpr_at_1pct_needs_100_report_nonmembers(n_per_class, measurable):
    labels, sel = balanced(n_per_class)
    stats = np.random.default_rng(1).normal(size=2 * n_per_class) - labels
    estimate = assemble(stats, labels, sel).metrics.tpr_at_1pct_fpr
    assert estimate.measurable is measurable
    if measurable:
        assert 0.0 <= estimate.value <= 1.0 and estimate.realised_fpr <= 0.01
    else:
        report_nonmembers = n_per_class - n_per_class // 2
        assert estimate.value is None and estimate.ci_low is None
        assert "needs at least 100 non-members" in estimate.reason
        assert f"only {report_nonmembers}" in estimate.reason
        assert estimate.to_dict()["value"] is None


def test_selecting_by_tpr_without_100_nonmembers_says_to_select_by_auc():
    labels, sel = balanced(40)
    stats = np.random.default_rng(2).normal(size=(80, 3))
    with pytest.raises(DataError, match="--select auc"):
        assemble(stats, labels, sel, select="tpr1")
    assert assemble(stats, labels, sel, select="auc").chosen_t in (0, 10, 20)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_statistics_are_refused_not_scored(bad):
    labels, sel = balanced(10)
    stats = np.random.default_rng(3).normal(size=(20, 2))
    stats[4, 1] = bad
    with pytest.raises(DataError, match="1 of 10 scores are NaN or infinite; fix or drop"):
        assemble(stats, labels, sel)


def test_identical_images_audit_to_exact_chance_end_to_end():
    image = torch.linspace(-1, 1, 16).reshape(1, 1, 4, 4)
    copies = image.expand(6, 1, 4, 4).clone()
    result = run_audit(EmpiricalDenoiser(copies), copies, copies.clone(), timesteps=[10, 50], n_bootstrap=20)
    assert np.all(result.statistics == result.statistics[:1])  # every column is one value
    assert result.metrics.auc.value == 0.5 and result.metrics.asr.value == 0.5
    assert result.metrics.tpr_at_1pct_fpr.value is None and result.chosen_t == 10
