"""The Ray engine gives the single-process answer exactly, survives a dead worker, and reads shards.

One local Ray instance (2 CPUs, a small object store) serves every test of this file.
"""

import io
import json
import os
import tarfile

import numpy as np
import pytest
import torch

from core.cli import main

MODEL = "digits-ddpm-memorising"


@pytest.fixture(scope="session")
def ray_local():
    ray = pytest.importorskip("ray", reason="the Ray engine needs the ray extra: pip install -e '.[ray]'")
    # Ray's default nice 15 would let anything else on a shared machine starve the workers.
    os.environ.setdefault("RAY_worker_niceness", "0")
    ray.init(num_cpus=2, object_store_memory=150 * 1024**2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _png(image: torch.Tensor) -> bytes:
    from core.images import to_uint8_image

    buffer = io.BytesIO()
    to_uint8_image(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _result(folder) -> dict:
    """result.json without the one field that legitimately differs between engines."""
    info = json.loads((folder / "result.json").read_text())
    info.pop("wall_time_s")
    return info


def _same_audit(a, b) -> None:
    assert (a / "samples.csv").read_bytes() == (b / "samples.csv").read_bytes()
    assert _result(a) == _result(b)


def test_ray_audit_of_the_demo_equals_the_single_process_audit(ray_local, tmp_path):
    # sima is deterministic; loss draws noise keyed by (seed, image, t), so it must agree too.
    common = ["audit", "--model", MODEL, "--members", "demo", "--nonmembers", "demo", "--attack", "sima,loss",
              "--timesteps", "50,100", "--batch-size", "64", "--bootstrap", "200", "--seed", "3", "--quiet"]
    assert main([*common, "--no-cache", "--out", str(tmp_path / "local")]) == 0
    assert main([*common, "--engine", "ray", "--workers", "2", "--shards", str(tmp_path / "shards"),
                 "--out", str(tmp_path / "ray")]) == 0
    for attack in ("sima", "loss"):
        _same_audit(tmp_path / "local" / attack, tmp_path / "ray" / attack)
    assert _result(tmp_path / "ray" / "sima")["n_members"] == 256


@pytest.fixture
def sources(tmp_path):
    """Members: a folder of PNGs with two bad files. Non-members: two Parquet shards, one bad row."""
    from core import load_model
    from core.datasets import demo_sets

    members, member_ids, heldout, heldout_ids = demo_sets(load_model(MODEL))
    folder = tmp_path / "members"
    folder.mkdir()
    for image, name in zip(members[:40], member_ids):
        (folder / f"{name}.png").write_bytes(_png(image))
    (folder / "broken.png").write_bytes(_png(members[40])[:60])
    (folder / "empty.png").write_bytes(b"")
    import pyarrow as pa
    import pyarrow.parquet as pq

    shards = tmp_path / "heldout"
    shards.mkdir()
    for s in range(2):
        rows = range(30 * s, 30 * s + 30)
        images = [_png(heldout[i]) for i in rows] + [b"not an image"]
        ids = [heldout_ids[i] for i in rows] + ["bad-row"]
        pq.write_table(pa.table({"image": images, "id": ids}), shards / f"part-{s}.parquet", row_group_size=8)
    return folder, shards


def test_a_worker_that_dies_once_loses_nothing_and_counts_nothing_twice(ray_local, sources, tmp_path, monkeypatch, capsys):
    from core import audit
    from core.distributed import FAIL_ONCE_ENV

    folder, shards = sources
    monkeypatch.setattr(audit, "CHUNK_IMAGES", 16)  # several chunks per set, in both engines
    common = ["audit", "--model", MODEL, "--members", str(folder), "--nonmembers", str(shards), "--attack", "loss",
              "--timesteps", "50,100", "--batch-size", "32", "--bootstrap", "100", "--quiet"]
    assert main([*common, "--no-cache", "--out", str(tmp_path / "local")]) == 0
    local_warnings = sorted(line for line in capsys.readouterr().err.splitlines() if line.startswith("warning"))
    marker = tmp_path / "died"
    monkeypatch.setenv(FAIL_ONCE_ENV, str(marker))
    ray_args = [*common, "--engine", "ray", "--shards", str(tmp_path / "shards")]
    assert main([*ray_args, "--workers", "2", "--out", str(tmp_path / "ray")]) == 0
    assert marker.exists(), "the injected fault did not fire"
    ray_warnings = sorted(line for line in capsys.readouterr().err.splitlines() if line.startswith("warning"))
    _same_audit(tmp_path / "local", tmp_path / "ray")
    assert ray_warnings == local_warnings and len(ray_warnings) == 4  # 2 bad files, 1 bad row per shard
    result = _result(tmp_path / "ray")
    assert (result["n_members"], result["n_nonmembers"]) == (40, 60)

    # A rerun finds every chunk's shard and computes nothing: the shards are untouched.
    written = {p: p.stat().st_mtime_ns for p in (tmp_path / "shards").iterdir()}
    assert len(written) == 7 and not any(p.suffix == ".tmp" for p in written)  # 3 + 2 x 2 chunks, no leftovers
    assert main([*ray_args, "--workers", "1", "--out", str(tmp_path / "again")]) == 0
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "shards").iterdir()} == written
    _same_audit(tmp_path / "local", tmp_path / "again")


def test_ray_score_and_collection_equal_the_local_ones(ray_local, sources, capsys):
    folder, _ = sources
    argv = ["--model", MODEL, "--reference", "demo", "--json", "--quiet", "--batch-size", "32"]
    local_ray = ([], ["--engine", "ray", "--workers", "1"])
    scores = []
    for extra in local_ray:
        assert main(["score", *argv, "--t", "50", str(folder), *extra]) == 2  # the two bad files: exit 2, as today
        scores.append(json.loads(capsys.readouterr().out))
    assert scores[1] == scores[0] and len(scores[0]) == 40 and all("p_value" in r for r in scores[0])
    tests = []
    for extra in local_ray:
        assert main(["collection", *argv, "--images", str(folder), "--bootstrap", "50", *extra]) == 2
        tests.append(json.loads(capsys.readouterr().out))
    # The reference is swept as one chunk by Ray and as the subset left after calibration here,
    # so its statistics may differ in the last bits: equal up to rounding.
    numbers = {k for k, v in tests[0].items() if isinstance(v, float)}
    assert {k: tests[1][k] for k in numbers} == pytest.approx({k: tests[0][k] for k in numbers}, rel=1e-9)
    assert {k: v for k, v in tests[1].items() if k not in numbers} == {k: v for k, v in tests[0].items() if k not in numbers}
    assert tests[0]["n"] == 40


# ----------------------------------------------------------------------------- shard readers (no Ray)


def test_parquet_tar_and_folder_give_the_same_images_and_list_bad_ones(tmp_path):
    from core.data import load_images
    from core.shards import iter_units, plan_units

    g = torch.Generator().manual_seed(0)
    images = torch.rand(5, 3, 8, 8, generator=g) * 2 - 1
    folder = tmp_path / "folder"
    folder.mkdir()
    with tarfile.open(tmp_path / "shard.tar", "w") as tar:
        for i, image in enumerate(images):
            data = _png(image)
            (folder / f"s{i}.png").write_bytes(data)
            for name, payload in ((f"s{i}.png", data), (f"s{i}.txt", b"a caption")):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
        info = tarfile.TarInfo("s9.jpg")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    import pyarrow as pa
    import pyarrow.parquet as pq

    # Hugging Face datasets store images as {"bytes", "path"} structs.
    cells = [{"bytes": (folder / f"s{i}.png").read_bytes(), "path": f"s{i}.png"} for i in range(5)]
    pq.write_table(pa.table({"image": cells}), tmp_path / "shard.parquet", row_group_size=2)

    expected = load_images(folder, channels=3, size=8).images
    for spec in (str(tmp_path / "shard.tar"), f"file://{tmp_path}/shard.parquet", str(tmp_path / "*.tar")):
        chunks = list(iter_units(spec, channels=3, size=(8, 8), chunk=2))
        assert torch.equal(torch.cat([c.images for c in chunks]), expected), spec
    tar_chunks = list(iter_units(str(tmp_path / "shard.tar"), channels=3, size=(8, 8), chunk=4))
    assert [len(c) for c in tar_chunks] == [4, 1] and tar_chunks[0].ids[0] == "shard.tar:s0.png"
    assert [e.source for c in tar_chunks for e in c.errors] == ["shard.tar:s9.jpg"]
    # folder chunks read on their own equal the single reader's batches
    assert [(u.start, u.stop) for u in plan_units(str(folder), 2)] == [(0, 2), (2, 4), (4, 5)]


def test_missing_shards_and_columns_are_one_line_errors(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"caption": ["a", "b"]}), tmp_path / "captions.parquet")
    for source, message in ((tmp_path / "captions.parquet", "no image column"), (tmp_path / "none-*.tar", "holds no")):
        rc = main(["audit", "--model", MODEL, "--members", str(source), "--nonmembers", "demo", "--quiet"])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and message in err and len(err.splitlines()) == 1


# ----------------------------------------------------------------------------- the GPU path, on CPU


def test_bf16_autocast_is_close_to_fp32_and_the_speed_settings_enter_the_cache_key(tiny_model_dir):
    from core import load_model
    from core.attacks import SimA
    from core.errors import ModelError

    fp32 = load_model(tiny_model_dir)
    bf16 = load_model(tiny_model_dir, precision="bf16", channels_last=True)
    x = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    a, b = (SimA().statistic(m, x, 20).numpy() for m in (fp32, bf16))
    assert not np.array_equal(a, b)  # autocast really ran in bf16
    np.testing.assert_allclose(b, a, rtol=0.05)
    assert fp32.numerics == "cpu" and bf16.numerics == "cpu|bf16"  # pixel models are channels-last already
    assert bf16.fingerprint == fp32.fingerprint
    compiled = load_model(tiny_model_dir, compile=True)
    assert compiled.numerics == "cpu|compiled" and compiled.fingerprint == fp32.fingerprint
    with pytest.raises(ModelError, match="fp16 autocast needs a GPU"):
        load_model(tiny_model_dir, precision="fp16")
