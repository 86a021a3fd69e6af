"""Per-image verdicts: one implementation for the CLI and the app, BH, calibration, references."""

import json

import numpy as np
import pytest
from PIL import Image

from core import load_model, scoring
from core.cli import main
from core.datasets import digits_uint8

MEMORISING = "digits-ddpm-memorising"


def test_benjamini_hochberg_matches_a_hand_computed_example():
    p = np.array([0.001, 0.008, 0.039, 0.041, 0.042, 0.06, 0.074, 0.205])
    # p_(i) * 8 / i = .008 .032 .104 .082 .0672 .08 .08457 .205; running minimum from the top:
    expected = np.array([0.008, 0.032, 0.0672, 0.0672, 0.0672, 0.08, 0.074 * 8 / 7, 0.205])
    order = np.random.default_rng(0).permutation(8)
    assert np.allclose(scoring.benjamini_hochberg(p[order]), expected[order])
    # At q = 0.05 the step-up rule rejects only the first two (p_(3) = .039 > 3 * .05 / 8).
    assert np.flatnonzero(scoring.benjamini_hochberg(p) <= 0.05).tolist() == [0, 1]


def test_verdict_words_leave_one_out_and_fdr():
    reference = np.arange(10.0)  # membership scores of 10 known non-members
    plain = scoring.image_verdicts([20.0, 3.0, 20.0], reference, alpha=0.1, digests=["x", "d3", "y"],
                                   reference_digests=[f"d{i}" for i in range(10)])
    assert [v.words for v in plain] == ["likely member", "not flagged", "likely member"]
    assert plain[0].p_value == pytest.approx(1 / 11) and not plain[0].left_out
    # The image scored 3.0 is reference image d3: left out, 6 of the other 9 score at least as high.
    assert plain[1].left_out and plain[1].n_reference == 9 and plain[1].p_value == pytest.approx(7 / 10)
    assert scoring.image_verdicts([20.0], reference, alpha=0.01)[0].words == "cannot decide"
    batch = scoring.image_verdicts([20.0, 3.0, 20.0], reference, alpha=0.1, fdr=0.2)
    assert [v.adjusted_p for v in batch] == pytest.approx([1.5 / 11, 8 / 11, 1.5 / 11])  # p = 1/11, 8/11, 1/11
    assert [v.words for v in batch] == ["likely member", "not flagged", "likely member"]
    assert "Benjamini-Hochberg" in batch[0].sentence


def test_the_cli_and_the_app_give_the_same_words_and_p_values(tiny_model_dir, tmp_path, capsys):
    from explorer import state, uploads, verdicts
    from explorer.choices import Choices

    rng = np.random.default_rng(0)
    reference = rng.integers(0, 256, size=(12, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "reference.npz", x=reference)
    files = []
    for i, picture in enumerate([rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8), reference[4]]):
        Image.fromarray(picture).save(tmp_path / f"query{i}.png")
        files.append(tmp_path / f"query{i}.png")
    for fdr in ([], ["--fdr", "0.3"]):
        assert main(["score", "--model", str(tiny_model_dir), "--t", "10", "--reference", str(tmp_path / "reference.npz"),
                     "--fpr", "0.2", "--json", "--no-cache", *fdr, *map(str, files)]) == 0
        cli = json.loads(capsys.readouterr().out)

        choices = Choices(spec=str(tiny_model_dir), device="cpu", attack="sima", grid=(10,))
        model = state.get_model(choices.spec, "cpu")
        ref = uploads.load_uploads([("reference.npz", (tmp_path / "reference.npz").read_bytes())], model.image_shape).images
        query = uploads.load_uploads([(f.name, f.read_bytes()) for f in files], model.image_shape).images
        from core.hashing import row_digests

        app = verdicts.check(verdicts.reference_from_images(choices, ref), 10, state.image_statistics(choices, query)[:, 0],
                          0.2, row_digests(query), fdr=0.3 if fdr else None)
        assert [r["verdict"] for r in cli] == [v.words for v in app]
        assert [r["p_value"] for r in cli] == pytest.approx([v.p_value for v in app], abs=0)
        assert [r["explanation"] for r in cli] == [v.sentence for v in app]
        assert app[1].left_out and app[1].n_reference == 11  # the reference image is not judged by itself


def test_calibration_comes_from_the_card_and_the_demo_reference_leaves_out_the_selection_half():
    model = load_model(MEMORISING)
    card = scoring.calibrate(model)
    check = model.manifest["check"]
    assert (card.attack, card.t, card.per_image_auc) == ("sima", check["t"], check["auc"]) and "model card" in card.source
    given = scoring.calibrate(model, t=50)
    assert given.t == 50 and given.per_image_auc == next(r["auc"] for r in check["per_t"] if r["t"] == 50)
    images, ids = scoring.demo_reference(model, card)
    heldout = model.manifest["heldout_ids"]
    assert len(ids) == len(heldout) - len(heldout) // 2 and not set(ids) & set(card.selection_ids)
    assert set(ids) <= set(heldout) and len(images) == len(ids)


def test_a_model_without_card_or_split_needs_a_given_t(tiny_model_dir, tmp_path, capsys):
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    rc = main(["collection", "--model", str(tiny_model_dir), "--images", str(tmp_path / "a.png"),
               "--reference", str(tmp_path / "a.png")])
    assert rc == 2 and "give the timestep (--t)" in capsys.readouterr().err
    assert main(["score", "--model", str(tiny_model_dir), "--fdr", "0.1", str(tmp_path / "a.png")]) == 2
    assert capsys.readouterr().err.strip() == "error: --fdr needs --reference: a verdict compares each image with known non-members."


@pytest.mark.parametrize("which", ["members", "heldout"])
def test_sima_collection_on_the_memorising_demo(which, tmp_path, capsys):
    """Twenty members give p < 0.001; twenty held-out images of the report half do not get flagged."""
    model = load_model(MEMORISING)
    card = scoring.calibrate(model)
    key = "member_ids" if which == "members" else "heldout_ids"
    ids = [i for i in model.manifest[key] if i not in card.selection_ids][:20]
    pictures = digits_uint8(16)
    for image_id in ids:
        Image.fromarray(pictures[int(image_id.split("-")[-1])]).save(tmp_path / f"{image_id}.png")
    rc = main(["collection", "--model", MEMORISING, "--images", *map(str, sorted(tmp_path.glob("*.png"))),
               "--reference", "demo", "--json", "--bootstrap", "200", "--quiet"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) >= {"n", "m", "t", "attack", "p_value", "auc", "ci_low", "ci_high", "verdict", "images_needed"}
    assert result["n"] == 20 and result["t"] == card.t and result["attack"] == "sima"
    if which == "members":
        assert result["m"] == 250 and result["p_value"] < 0.001 and result["verdict"] == "likely used"
        assert result["overlap"] == 0 and result["ci_low"] > 0.9
    else:
        # Every one of them is in the demo reference: reported and left out of it.
        assert result["overlap"] == 20 and result["m"] == 230 and result["verdict"] == "not flagged"


def test_without_a_card_t_comes_from_a_calibration_audit_on_the_models_split():
    import copy

    from core.audit import run_audit
    from core.datasets import demo_sets

    model = copy.copy(load_model("digits-empirical"))
    model.manifest = {k: v for k, v in model.manifest.items() if k != "check"}
    calibrated = scoring.calibrate(model, timesteps=[0, 300], seed=1)
    members, member_ids, heldout, heldout_ids = demo_sets(model)
    audit = run_audit(model, members, heldout, attack="sima", timesteps=[0, 300], seed=1, n_bootstrap=0,
                      member_ids=member_ids, nonmember_ids=heldout_ids)
    assert calibrated.t == audit.chosen_t and calibrated.per_image_auc == audit.metrics.auc.value
    assert "calibration audit on the model's own split (seed 1)" in calibrated.source
    assert set(calibrated.selection_ids) == {i for i, s in zip(audit.ids, audit.selection_half) if s}
