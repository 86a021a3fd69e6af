"""The `sima` command end to end on a tiny model saved to a temporary folder."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from core.cli import main


@pytest.fixture
def image_sets(tmp_path):
    rng = np.random.default_rng(0)
    members = rng.integers(0, 256, size=(8, 8, 8, 3), dtype=np.uint8)
    nonmembers = rng.integers(0, 256, size=(8, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "members.npz", x=members)
    np.savez(tmp_path / "nonmembers.npz", x=nonmembers)
    for i in range(2):
        Image.fromarray(members[i]).save(tmp_path / f"img{i}.png")
    return tmp_path


def test_audit_writes_results_and_prints_a_table(tiny_model_dir, image_sets, capsys):
    out = image_sets / "out"
    rc = main(["audit", "--model", str(tiny_model_dir), "--members", str(image_sets / "members.npz"),
               "--nonmembers", str(image_sets / "nonmembers.npz"), "--timesteps", "0:20:10",
               "--bootstrap", "20", "--out", str(out), "--quiet"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| sima |" in printed and "TPR@1%FPR" in printed
    result = json.loads((out / "result.json").read_text())
    assert result["attack"] == "sima" and result["n_members"] == 8 and result["chosen_t"] in (0, 10, 20)
    assert result["metrics"]["tpr_at_1pct_fpr"]["value"] is None  # 4 report non-members
    assert (out / "samples.csv").read_text().splitlines()[0] == "id,label,half,t0,t10,t20"


def test_audit_json_output_is_clean(tiny_model_dir, image_sets, capsys):
    rc = main(["audit", "--model", str(tiny_model_dir), "--members", str(image_sets / "members.npz"),
               "--nonmembers", str(image_sets / "nonmembers.npz"), "--timesteps", "10", "--bootstrap", "0", "--json"])
    assert rc == 0
    assert json.loads(capsys.readouterr().out)["per_t"][0]["t"] == 10


def test_score_with_reference_gives_p_values_and_verdicts(tiny_model_dir, image_sets, capsys):
    rc = main(["score", "--model", str(tiny_model_dir), "--t", "10", "--reference", str(image_sets / "nonmembers.npz"),
               "--fpr", "0.2", "--json", str(image_sets / "img0.png"), str(image_sets / "img1.png")])
    assert rc == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["file"] for r in records] == ["img0.png", "img1.png"]
    for r in records:
        assert set(r) >= {"file", "t", "statistic", "p_value", "verdict"}
        assert 1 / 9 <= r["p_value"] <= 1 and r["verdict"] in ("likely member", "not flagged")


def test_score_says_the_model_cannot_judge_images_outside_its_domain(tmp_path, capsys):
    from core.datasets import digits_split, digits_uint8
    from tests.helpers import out_of_domain_files

    paths = []
    for name, data in out_of_domain_files():
        (tmp_path / name).write_bytes(data)
        paths.append(str(tmp_path / name))
    digit = tmp_path / "heldout-digit.png"  # one of the reference images: judged as usual
    Image.fromarray(digits_uint8(16)[int(digits_split().heldout_ids[0].split("-")[-1])]).save(digit)
    rc = main(["score", "--model", "digits-empirical", "--t", "50", "--reference", "demo", "--json", *paths, str(digit)])
    assert rc == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["verdict"] for r in records] == ["cannot judge"] * 3 + ["not flagged"]
    assert all(r["explanation"].startswith("This model cannot judge this image") for r in records[:3])
    main(["score", "--model", "digits-empirical", "--t", "50", "--reference", "demo", paths[0]])
    assert "cannot judge\t(This model cannot judge this image: " in capsys.readouterr().out


def test_bad_file_scores_the_good_ones_and_exits_2(tiny_model_dir, image_sets, capsys):
    (image_sets / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    rc = main(["score", "--model", str(tiny_model_dir), "--json", str(image_sets / "img0.png"), str(image_sets / "broken.png")])
    captured = capsys.readouterr()
    assert rc == 2
    assert [r["file"] for r in json.loads(captured.out)] == ["img0.png"]
    assert "broken.png" in captured.err and "Traceback" not in captured.err


@pytest.mark.parametrize("argv, message", [
    (["score", "--model", "no-such-model", "x.png"], "not a bundled demo"),
    (["audit", "--model", "MODEL", "--members", "missing-folder", "--nonmembers", "missing-folder"], "missing-folder"),
    (["audit", "--model", "MODEL", "--members", "demo", "--nonmembers", "demo", "--timesteps", "5:1:0"], "timesteps"),
    (["audit", "--model", "MODEL", "--members", "demo", "--nonmembers", "demo", "--attack", "magic"], "magic"),
])
def test_user_errors_exit_2_with_one_line(tiny_model_dir, argv, message, capsys):
    argv = [str(tiny_model_dir) if a == "MODEL" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error:") and message in last and "Traceback" not in err


def test_console_script_runs(tiny_model_dir, tmp_path):
    sima = [sys.executable, "-m", "core.cli"]
    done = subprocess.run([*sima, "cache", "info", "--cache-dir", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "0 cached statistics" in done.stdout


def test_cache_clear_removes_statistics_and_calibrations(tmp_path, capsys):
    from core.batching import FILE_NAME
    from core.cache import ScoreCache, default_dir

    ScoreCache(tmp_path).put("m", "a", [("s", 1, 0.5)])
    (default_dir() / FILE_NAME).parent.mkdir(parents=True, exist_ok=True)
    (default_dir() / FILE_NAME).write_text('{"some-model|cpu": [32, 1]}')
    assert main(["cache", "clear", "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    # the count also takes in calibrations earlier tests left in memory
    assert "Removed 1 cached statistics" in out and re.search(r"and [1-9]\d* stored batch-size calibration", out)
    assert not (default_dir() / FILE_NAME).exists() and ScoreCache(tmp_path).info().entries == 0


def test_audit_rewrites_only_the_audit_section_of_a_model_card(tiny_model_dir, image_sets):
    card = image_sets / "README.md"
    card.write_text("# Model\n\nIntro.\n\n<!-- sima-audit:start -->\nold table\n<!-- sima-audit:end -->\n\nFooter.\n")
    argv = ["audit", "--model", str(tiny_model_dir), "--members", str(image_sets / "members.npz"),
            "--nonmembers", str(image_sets / "nonmembers.npz"), "--timesteps", "10,20", "--bootstrap", "10",
            "--attack", "sima,sima-mc", "--card", str(card), "--quiet"]
    assert main(argv) == 0
    text = card.read_text()
    assert text.startswith("# Model\n\nIntro.") and text.rstrip().endswith("Footer.")
    assert "old table" not in text and "| sima |" in text and "| sima-mc |" in text
    assert "Written by `sima audit --model" in text


def test_several_attacks_are_compared_pairwise_and_an_attack_that_ignores_t_shows_none(tiny_model_dir, image_sets, capsys):
    from core.attacks import SecMI

    rc = main(["audit", "--model", str(tiny_model_dir), "--members", str(image_sets / "members.npz"),
               "--nonmembers", str(image_sets / "nonmembers.npz"), "--timesteps", "10,30", "--attack", "secmi,pfami,sima", "--batch-size", "64",
               "--bootstrap", "50", "--quiet"])
    assert rc == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split(" | ")[0].strip("| "): line.strip("|").split(" | ") for line in lines if line.startswith("| ")}
    assert rows["pfami"][1] == "-" and rows["sima"][1] in ("10", "30")
    assert int(rows["secmi"][6]) == SecMI().queries_per_sample(int(rows["secmi"][1]))  # at its t, not the grid's max
    paired = [line for line in lines if "paired bootstrap over the same 4 members and 4 non-members" in line]
    assert len(paired) == 2 and all(re.match(r"(sima and \w+ are not distinguishable at 95%|sima > \w+|\w+ > sima) by AUC", p)
                                    for p in paired)
    rc = main(["audit", "--model", str(tiny_model_dir), "--members", str(image_sets / "members.npz"),
               "--nonmembers", str(image_sets / "nonmembers.npz"), "--timesteps", "10,30", "--attack", "secmi,pfami,sima",
               "--batch-size", "64", "--bootstrap", "50", "--quiet", "--json"])
    payload = json.loads(capsys.readouterr().out)
    assert [a["attack"] for a in payload["audits"]] == ["secmi", "pfami", "sima"]
    assert [(c["a"], c["b"]) for c in payload["comparisons"]] == [("sima", "secmi"), ("sima", "pfami")]
    assert all(c["n_members"] == 4 and c["verdict"] for c in payload["comparisons"])
