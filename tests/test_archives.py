"""CIFAR archives (binary and python versions) and the papers' split files, on small synthetic archives."""

import csv
import io
import os
import pickle
import tarfile

import numpy as np
import pytest

from core.archives import read_split, split_sets, training_images
from core.cli import main
from core.errors import DataError

PER_BATCH = 4


@pytest.fixture
def pictures():
    """20 random 32x32 colour pictures: the whole synthetic CIFAR-10 training split, in order."""
    return np.random.default_rng(0).integers(0, 256, size=(5 * PER_BATCH, 32, 32, 3), dtype=np.uint8)


def _planes(batch: np.ndarray) -> np.ndarray:
    return batch.transpose(0, 3, 1, 2).reshape(len(batch), -1)  # red, green, blue planes, row by row


def write_binary(folder, pictures, *, label_bytes=1, names=None):
    folder.mkdir(parents=True, exist_ok=True)
    names = names or [f"data_batch_{i}.bin" for i in range(1, 6)]
    for name, batch in zip(names, np.array_split(pictures, len(names))):
        labels = np.arange(len(batch) * label_bytes, dtype=np.uint8).reshape(len(batch), label_bytes) % 10
        (folder / name).write_bytes(np.concatenate([labels, _planes(batch)], axis=1).tobytes())
    return folder


def write_python(folder, pictures):
    """As the CIFAR python version: dicts with bytes keys, pickled with protocol 2."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, batch in enumerate(np.array_split(pictures, 5), 1):
        content = {b"batch_label": b"training batch %d of 5" % i, b"labels": list(range(len(batch))),
                   b"data": _planes(batch), b"filenames": [b"img_%d.png" % j for j in range(len(batch))]}
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(content, protocol=2))
    return folder


def test_binary_python_and_tar_versions_give_the_training_split_in_order(tmp_path, pictures):
    binary = write_binary(tmp_path / "bin" / "cifar-10-batches-bin", pictures)
    python = write_python(tmp_path / "py" / "cifar-10-batches-py", pictures)
    assert np.array_equal(training_images("cifar10", binary), pictures)
    assert np.array_equal(training_images("cifar10", tmp_path / "py"), pictures)  # the parent folder works too
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as archive:
        archive.add(python, arcname="cifar-10-batches-py")
    assert np.array_equal(training_images("cifar10", tmp_path / "cifar-10-python.tar.gz"), pictures)
    hundred = write_binary(tmp_path / "c100" / "cifar-100-binary", pictures, label_bytes=2, names=["train.bin"])
    assert np.array_equal(training_images("cifar100", hundred.parent), pictures)


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_python_version_refuses_anything_but_containers_and_arrays(tmp_path, pictures):
    folder = write_python(tmp_path / "cifar-10-batches-py", pictures)
    marker = tmp_path / "pwned"
    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": _Exploit(marker)}, protocol=2))
    with pytest.raises(DataError, match="only plain containers and numpy arrays") as caught:
        training_images("cifar10", folder)
    assert "system" in str(caught.value) and "\n" not in str(caught.value)
    assert not marker.exists()


@pytest.mark.parametrize("damage, message", [
    (lambda f: (f / "data_batch_4.bin").unlink(), "lacks data_batch_4.bin"),
    (lambda f: (f / "data_batch_2.bin").write_bytes(b"\x00" * 100), "whole number of 3073-byte"),
])
def test_damaged_binary_archives_are_refused(tmp_path, pictures, damage, message):
    folder = write_binary(tmp_path / "cifar-10-batches-bin", pictures)
    damage(folder)
    with pytest.raises(DataError, match=message):
        training_images("cifar10", folder)


def test_split_file_picks_members_and_nonmembers(tmp_path, pictures):
    write_binary(tmp_path / "cifar-10-batches-bin", pictures)
    np.savez(tmp_path / "split.npz", mia_train_idxs=np.array([3, 7, 11, 19]), mia_eval_idxs=np.array([0, 8, 12, 18]), ratio=0.5)
    (members, member_ids), (nonmembers, nonmember_ids) = split_sets(f"cifar10:{tmp_path}", tmp_path / "split.npz")
    assert np.array_equal(members, pictures[[3, 7, 11, 19]]) and np.array_equal(nonmembers, pictures[[0, 8, 12, 18]])
    assert member_ids[0] == "cifar10-train[3]" and nonmember_ids[-1] == "cifar10-train[18]"


@pytest.mark.parametrize("arrays, message", [
    ({"mia_train_idxs": [1, 2]}, "needs arrays"),
    ({"mia_train_idxs": [1, 20], "mia_eval_idxs": [3]}, "outside 0..19"),
    ({"mia_train_idxs": [1, 2], "mia_eval_idxs": [2, 3]}, "both members and non-members"),
    ({"mia_train_idxs": [1, 1], "mia_eval_idxs": [3]}, "repeats"),
    ({"mia_train_idxs": [0.5], "mia_eval_idxs": [3]}, "integer indices"),
])
def test_bad_split_files_are_one_line_errors(tmp_path, arrays, message):
    np.savez(tmp_path / "split.npz", **{k: np.array(v) for k, v in arrays.items()})
    with pytest.raises(DataError, match=message):
        read_split(tmp_path / "split.npz", 20)


def test_audit_from_an_archive_and_a_split(tmp_path, pictures, tiny_model_dir, capsys):
    write_binary(tmp_path / "data" / "cifar-10-batches-bin", pictures)
    members, nonmembers = [1, 4, 6, 9, 13, 17], [0, 2, 5, 10, 14, 18]
    np.savez(tmp_path / "split.npz", mia_train_idxs=np.array(members), mia_eval_idxs=np.array(nonmembers))
    out = tmp_path / "out"
    rc = main(["audit", "--model", str(tiny_model_dir), "--dataset", f"cifar10:{tmp_path / 'data'}",
               "--split", str(tmp_path / "split.npz"), "--timesteps", "10", "--bootstrap", "0", "--quiet",
               "--batch-size", "8", "--no-cache", "--out", str(out)])
    assert rc == 0
    rows = list(csv.DictReader(io.StringIO((out / "samples.csv").read_text())))
    for label, indices in (("1", members), ("0", nonmembers)):  # members are the positive class
        assert sorted(r["id"] for r in rows if r["label"] == label) == sorted(f"cifar10-train[{i}]" for i in indices)
    capsys.readouterr()
    assert main(["audit", "--model", str(tiny_model_dir), "--dataset", f"cifar10:{tmp_path / 'data'}"]) == 2
    assert "--dataset and --split go together" in capsys.readouterr().err
