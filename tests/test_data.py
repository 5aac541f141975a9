"""Datasets, IDX parsing, user data (npz, PNG folder) with their error messages, transforms, derivation, and the
resumable distributed sampler."""

from __future__ import annotations

import gzip
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from mtd_core.data import (
    ArrayDataset,
    EdgesTransform,
    ResumableSampler,
    build_transform,
    check_against_taskset,
    derive_batch,
    load_dataset,
    load_digits,
    load_fashion_mnist,
    load_npz,
    load_png_folder,
    read_idx,
    resolve_dataset_config,
    write_idx,
)
from mtd_core.errors import CheckpointError, ConfigError, ModalityDataError
from mtd_core.plugins.registry import get_registry
from mtd_core.taskset import TaskSet


# -- digits ---------------------------------------------------------------------------------------------
def test_digits_shapes_ranges_and_deterministic_split() -> None:
    s = load_digits(seed=0)
    assert len(s.train) + len(s.test) == 1797
    assert len(s.test) == round(1797 * 0.2)
    item = s.train[0]
    assert item["image"].shape == (1, 8, 8) and item["image"].dtype == torch.float32
    assert item["label"].dtype == torch.int64 and item["label"].ndim == 0
    imgs = s.train.fields["image"]
    assert imgs.min() == -1.0 and imgs.max() == 1.0
    # raw intensities are 0..16: scaled values lie on that 17-level grid
    assert torch.allclose((imgs + 1) * 8, ((imgs + 1) * 8).round())
    assert set(s.train.fields["label"].tolist()) == set(range(10))
    again = load_digits(seed=0)
    assert torch.equal(again.test.fields["image"], s.test.fields["image"])
    other = load_digits(seed=1)
    assert not torch.equal(other.test.fields["image"], s.test.fields["image"])
    assert s.info["class_names"][3] == "three"


def test_builtin_datasets_are_registered_through_the_hook() -> None:
    reg = get_registry()
    for name in ("digits", "fashion_mnist", "npz", "png_folder"):
        assert callable(reg.dataset(name))


# -- IDX / Fashion-MNIST -----------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".gz", ""])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32, np.float32, np.float64])
def test_idx_round_trip(tmp_path: Path, suffix: str, dtype: type) -> None:
    a = (np.arange(2 * 3 * 4) - 5).astype(dtype).reshape(2, 3, 4) if dtype != np.uint8 else \
        np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / f"x.idx{suffix}"
    write_idx(path, a)
    if suffix == ".gz":
        assert gzip.decompress(path.read_bytes())[:3] == bytes([0, 0, {np.uint8: 8, np.int16: 0x0B, np.int32: 0x0C,
                                                                       np.float32: 0x0D, np.float64: 0x0E}[dtype]])
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype) and np.array_equal(back, a)


def test_idx_parses_a_hand_written_big_endian_file(tmp_path: Path) -> None:
    # 2 labels, then a 2x2x3 image stack written byte by byte as the IDX spec describes
    (tmp_path / "l.idx").write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 2, 7, 9]))
    assert read_idx(tmp_path / "l.idx").tolist() == [7, 9]
    body = bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 3]) + bytes(range(12))
    (tmp_path / "i.idx").write_bytes(body)
    assert read_idx(tmp_path / "i.idx").tolist() == np.arange(12).reshape(2, 2, 3).tolist()


def test_idx_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "trunc-idx1-ubyte"
    bad.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 5, 1, 2]))  # says 5 labels, holds 2
    with pytest.raises(ModalityDataError, match=r"trunc-idx1-ubyte.*5.*2 data bytes"):
        read_idx(bad)
    junk = tmp_path / "junk.gz"
    junk.write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(ModalityDataError, match="junk.gz"):
        read_idx(junk)
    notidx = tmp_path / "text"
    notidx.write_bytes(b"hello world")
    with pytest.raises(ModalityDataError, match="not an IDX file"):
        read_idx(notidx)


def _fake_fashion(folder: Path, n_train: int = 6, n_test: int = 4, gz: bool = True) -> None:
    rng = np.random.default_rng(0)
    sfx = ".gz" if gz else ""
    write_idx(folder / f"train-images-idx3-ubyte{sfx}", rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8))
    write_idx(folder / f"train-labels-idx1-ubyte{sfx}", (np.arange(n_train) % 10).astype(np.uint8))
    write_idx(folder / f"t10k-images-idx3-ubyte{sfx}", rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8))
    write_idx(folder / f"t10k-labels-idx1-ubyte{sfx}", (np.arange(n_test) % 10).astype(np.uint8))


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_from_a_folder_of_idx_files(tmp_path: Path, gz: bool) -> None:
    _fake_fashion(tmp_path, gz=gz)
    s = load_fashion_mnist(str(tmp_path))
    assert len(s.train) == 6 and len(s.test) == 4
    x = s.train.fields["image"]
    assert x.shape == (6, 1, 28, 28) and x.dtype == torch.float32 and -1 <= x.min() and x.max() <= 1
    assert s.train.fields["label"].tolist() == [0, 1, 2, 3, 4, 5]
    assert s.info["class_names"][9] == "Ankle boot"
    assert len(load_fashion_mnist(str(tmp_path), limit_train=3).train) == 3


def test_fashion_mnist_missing_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MTD_FASHION_MNIST", raising=False)
    with pytest.raises(ModalityDataError) as e:
        load_fashion_mnist(str(tmp_path / "nowhere"))
    msg = str(e.value)
    assert "apt-get install -y dataset-fashion-mnist" in msg
    assert "folder" in msg and str(tmp_path / "nowhere") in msg and "never downloads" in msg


def test_fashion_mnist_bad_labels_name_the_file(tmp_path: Path) -> None:
    _fake_fashion(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.array([0, 1, 2, 12, 4, 5], dtype=np.uint8))
    with pytest.raises(ModalityDataError, match=r"train-labels-idx1-ubyte.gz: example 3 has label 12"):
        load_fashion_mnist(str(tmp_path))


# -- npz ------------------------------------------------------------------------------------------------
def test_npz_loads_images_labels_vectors_and_captions(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "data.npz"
    np.savez(path, image=rng.integers(0, 256, (20, 8, 8), dtype=np.uint8), label=np.arange(20) % 3,
             rep=rng.normal(size=(20, 5)).astype(np.float64), caption=np.array([f"c{i}" for i in range(20)]))
    s = load_npz(str(path), test_fraction=0.25, seed=1)
    assert len(s.train) == 15 and len(s.test) == 5
    x = s.train.fields["image"]
    assert x.shape == (15, 1, 8, 8) and x.dtype == torch.float32 and x.min() >= -1 and x.max() <= 1
    assert s.train.fields["label"].dtype == torch.int64
    assert s.train.fields["rep"].dtype == torch.float32 and s.train.fields["rep"].shape == (15, 5)
    assert isinstance(s.train.fields["caption"], list) and s.train[0]["caption"].startswith("c")


def test_npz_channels_last_and_separate_test_file(tmp_path: Path) -> None:
    a = np.zeros((4, 6, 6, 3), dtype=np.float32)
    a[..., 2] = 0.5
    np.savez(tmp_path / "tr.npz", image=a, label=np.arange(4))
    np.savez(tmp_path / "te.npz", image=a[:2], label=np.arange(2))
    s = load_npz(str(tmp_path / "tr.npz"), test_path=str(tmp_path / "te.npz"), channels_last=True)
    assert s.train.fields["image"].shape == (4, 3, 6, 6) and len(s.test) == 2
    assert torch.all(s.train.fields["image"][:, 2] == 0.5) and torch.all(s.train.fields["image"][:, 0] == 0)


@pytest.mark.parametrize("arrays,pattern", [
    ({"image": np.where(np.arange(5 * 64).reshape(5, 8, 8) == 130, np.nan, 0.0)},
     r"bad.npz, row 2: field 'image' contains NaN"),
    ({"image": np.full((3, 8, 8), 0.0)[[0, 0, 0]] + np.array([0, 0, 3.0])[:, None, None]},
     r"bad.npz, row 2: field 'image' has values in \[3"),
    ({"label": np.array([0, 1, -4, 2])}, r"bad.npz, row 2: field 'label' has label -4"),
    ({"label": np.array([0.0, 1.5])}, r"'label' has dtype float64; 1-D arrays are class labels"),
    ({"image": np.zeros((4, 8, 8)), "label": np.arange(3)}, r"one entry per example, got lengths"),
])
def test_npz_bad_data_names_the_file_and_example(tmp_path: Path, arrays: dict, pattern: str) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(ModalityDataError, match=pattern) as e:
        load_npz(str(path))
    assert str(path) in str(e.value)


def test_npz_unreadable_and_pickled_files_are_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip file at all")
    with pytest.raises(ModalityDataError, match=r"junk.npz: is a file starting with .*not an npz archive"):
        load_npz(str(junk))
    obj = tmp_path / "obj.npz"
    np.savez(obj, label=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(ModalityDataError, match="obj.npz"):
        load_npz(str(obj))
    with pytest.raises(ModalityDataError, match="file not found"):
        load_npz(str(tmp_path / "missing.npz"))


# -- PNG folder ---------------------------------------------------------------------------------------------
def _png_folder(root: Path, n: int = 6, size: int = 8, extra_rows: str = "") -> None:
    rows = ["filename,label,caption"]
    for i in range(n):
        a = np.full((size, size), i * 40, dtype=np.uint8)
        Image.fromarray(a).save(root / f"img{i}.png")
        rows.append(f"img{i}.png,{i % 3},a picture of {i}")
    (root / "labels.csv").write_text("\n".join(rows) + extra_rows + "\n")


def test_png_folder_loads_images_labels_and_captions(tmp_path: Path) -> None:
    _png_folder(tmp_path)
    s = load_png_folder(str(tmp_path), test_fraction=0.34, class_names=["a", "b", "c"])
    assert len(s.train) + len(s.test) == 6 and len(s.test) == 2
    x = torch.cat([s.train.fields["image"], s.test.fields["image"]])
    assert x.shape == (6, 1, 8, 8) and x.min() == -1.0
    assert s.info["num_classes"] == 3 and s.info["class_names"] == ["a", "b", "c"]
    assert all(c.startswith("a picture of") for c in s.train.fields["caption"])
    rgb = load_png_folder(str(tmp_path), channels=3)
    assert rgb.train.fields["image"].shape[1] == 3


def test_png_folder_split_column(tmp_path: Path) -> None:
    for i in range(4):
        Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "labels.csv").write_text("filename,label,split\n0.png,0,train\n1.png,1,train\n2.png,0,test\n3.png,1,train\n")
    s = load_png_folder(str(tmp_path))
    assert len(s.train) == 3 and len(s.test) == 1


def test_png_folder_errors_name_the_file(tmp_path: Path) -> None:
    _png_folder(tmp_path)
    (tmp_path / "img3.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(ModalityDataError, match=r"img3.png \(.*labels.csv, line 5\): cannot read the image"):
        load_png_folder(str(tmp_path))
    _png_folder(tmp_path)
    Image.fromarray(np.zeros((9, 8), dtype=np.uint8)).save(tmp_path / "img4.png")
    with pytest.raises(ModalityDataError, match=r"img4.png \(.*labels.csv, line 6\): image has shape \(9, 8\)"):
        load_png_folder(str(tmp_path))
    _png_folder(tmp_path, extra_rows="\nmissing.png,1,x")
    with pytest.raises(ModalityDataError, match=r"missing.png \(.*labels.csv, line 8\): file not found"):
        load_png_folder(str(tmp_path))
    _png_folder(tmp_path, extra_rows="\nimg0.png,seven,x")
    with pytest.raises(ModalityDataError, match=r"labels.csv, line 8: label 'seven' is not an integer"):
        load_png_folder(str(tmp_path))
    (tmp_path / "labels.csv").write_text("file,label\nimg0.png,1\n")
    with pytest.raises(ModalityDataError, match=r"missing column\(s\) \['filename'\]"):
        load_png_folder(str(tmp_path))


# -- config, keys, transforms, checks, derivation ------------------------------------------------------------
def _taskset(*extra: dict) -> TaskSet:
    return TaskSet.from_config({"modalities": [{"kind": "image", "role": "base", "channels": 1, "size": 8},
                                               *extra], "diffusion": {"kind": "linear", "T": 50}})


def test_dataset_options_are_checked_with_suggestions() -> None:
    reg = get_registry()
    with pytest.raises(ConfigError, match=r"dataset 'digits': unknown option 'test_fractoin' \(did you mean 'test_fraction'\?\)"):
        resolve_dataset_config({"name": "digits", "test_fractoin": 0.1}, reg)
    with pytest.raises(ConfigError, match="dataset.name"):
        resolve_dataset_config({"name": "digitz"}, reg)
    resolved = resolve_dataset_config({"name": "digits"}, reg).to_dict()
    assert resolved == {"name": "digits", "keys": {}, "transforms": [], "seed": 0, "test_fraction": 0.2}
    with pytest.raises(ConfigError, match=r"unknown transform kind 'edge' \(did you mean 'edges'\?\)"):
        build_transform({"kind": "edge"})
    with pytest.raises(ConfigError, match=r"unknown option 'int' \(did you mean 'into'\?\)"):
        build_transform({"kind": "edges", "int": "x"})


def test_keys_mapping_renames_fields() -> None:
    data = load_dataset({"name": "digits", "keys": {"image": "photo"}}, get_registry())
    b = data.batch(data.splits.train, torch.arange(3))
    assert set(b) == {"photo", "label"} and b["photo"].shape == (3, 1, 8, 8)
    with pytest.raises(ModalityDataError, match=r"'keys' names fields \['imag'\]"):
        load_dataset({"name": "digits", "keys": {"imag": "photo"}}, get_registry())


def test_edges_transform_gives_an_image_in_range_on_the_outline() -> None:
    x = -torch.ones(2, 1, 8, 8)
    x[:, :, 2:6, 2:6] = 1.0  # a bright square
    out = EdgesTransform(source="image", into="edges")({"image": x})
    e = out["edges"]
    assert e.shape == x.shape and e.min() >= -1 and e.max() == 1.0
    assert torch.all(e[:, :, 0, 0] == -1) and torch.all(e[:, :, 4, 4] == -1)  # flat regions: no edge
    assert torch.all(e[:, :, 2, 4] > 0)  # on the square's border
    assert torch.equal(out["image"], x)
    data = load_dataset({"name": "digits", "transforms": [{"kind": "edges", "into": "edges"}]}, get_registry())
    b = data.batch(data.splits.train, torch.arange(4))
    assert b["edges"].shape == (4, 1, 8, 8)


def test_check_against_taskset_names_source_and_index() -> None:
    ts = _taskset({"kind": "label", "num_classes": 5})
    labels = torch.tensor([0, 1, 4, 7, 2])
    with pytest.raises(ModalityDataError, match=r"mine.npz, example 3: modality 'label'.*has value 7.*\[0, 4\]"):
        check_against_taskset(ts, {"image": torch.zeros(5, 1, 8, 8), "label": labels}, "mine.npz")
    with pytest.raises(ModalityDataError, match=r"modality 'image'.*shape \(1, 8, 8\), the dataset has \(1, 9, 9\)"):
        check_against_taskset(ts, {"image": torch.zeros(5, 1, 9, 9)}, "mine.npz")
    x = torch.zeros(5, 1, 8, 8)
    x[4, 0, 1, 1] = float("nan")
    with pytest.raises(ModalityDataError, match=r"mine.npz, example 4: modality 'image' .*contains NaN"):
        check_against_taskset(ts, {"image": x}, "mine.npz")


def test_derive_batch_fills_derived_modalities_and_explains_missing_ones() -> None:
    ts = _taskset({"kind": "masked_image", "channels": 1, "size": 8, "ratio": 0.5})
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    out = derive_batch(ts, {"image": x}, torch.Generator().manual_seed(0))
    assert out["masked_image"].shape == x.shape
    assert (out["masked_image"] != x).any()
    ts2 = _taskset({"kind": "image", "name": "edges", "role": "aggregated", "channels": 1, "size": 8})
    with pytest.raises(ModalityDataError, match=r"(?s)modality 'edges' \(kind 'image'\) is not in the data.*transforms"):
        derive_batch(ts2, {"image": x})


# -- the sampler ------------------------------------------------------------------------------------------
def test_sampler_visits_every_example_once_per_epoch_and_is_seeded() -> None:
    s = ResumableSampler(10, 4, seed=3)
    stream = torch.cat([s.next_global() for _ in range(5)])  # 20 indices = 2 epochs
    assert sorted(stream[:10].tolist()) == list(range(10)) and sorted(stream[10:].tolist()) == list(range(10))
    assert not torch.equal(stream[:10], stream[10:])
    t = ResumableSampler(10, 4, seed=3)
    assert torch.equal(torch.cat([t.next_global() for _ in range(5)]), stream)


@settings(max_examples=25)
@given(size=st.integers(1, 40), batch=st.integers(1, 12), cut=st.integers(0, 10), seed=st.integers(0, 2**31))
def test_sampler_resumes_exactly(size: int, batch: int, cut: int, seed: int) -> None:
    a = ResumableSampler(size, batch, seed=seed)
    straight = [a.next_global() for _ in range(cut + 5)]
    b = ResumableSampler(size, batch, seed=seed)
    for _ in range(cut):
        b.next_global()
    state = b.state_dict()
    c = ResumableSampler(size, batch, seed=seed)
    c.load_state_dict(state)
    assert all(torch.equal(c.next_global(), x) for x in straight[cut:])


def test_sampler_ranks_split_the_global_batch() -> None:
    full = ResumableSampler(13, 6, seed=1)
    ranks = [ResumableSampler(13, 6, seed=1, rank=r, world_size=3) for r in range(3)]
    for _ in range(4):
        assert torch.equal(torch.cat([r.next() for r in ranks]), full.next())
    with pytest.raises(ConfigError, match="multiple of the number of processes"):
        ResumableSampler(13, 5, rank=0, world_size=2)
    with pytest.raises(CheckpointError, match="batch_size"):
        ResumableSampler(13, 6, seed=1).load_state_dict({**full.state_dict(), "batch_size": 8})


def test_array_dataset_rejects_ragged_fields() -> None:
    with pytest.raises(ModalityDataError, match="src: every field"):
        ArrayDataset({"a": torch.zeros(3), "b": torch.zeros(4)}, "src")


def test_a_bad_value_is_named_by_its_row_in_the_file_whatever_the_split() -> None:
    """Issue 14: a label out of range in file row 199 was reported by its index in the shuffled train split."""
    from mtd_core.training import RunConfig, build_run

    labels = np.arange(300) % 10
    labels[199] = 12
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "data.npz"
        np.savez(path, image=np.zeros((300, 8, 8), dtype=np.uint8), label=labels)
        cfg = RunConfig.from_dict({"dataset": {"name": "npz", "path": str(path)},
                                   "taskset": {"modalities": [{"kind": "image", "role": "base", "size": 8},
                                                              {"kind": "label", "num_classes": 10}],
                                               "diffusion": {"kind": "linear", "T": 50}},
                                   "backbone": {"name": "unet", "channels": 8, "channel_mult": [1], "groups": 4},
                                   "trainer": {"steps": 1, "sample_n": 0}})
        with pytest.raises(ModalityDataError, match=r"data.npz, row 199: modality 'label' .*has value 12"):
            build_run(cfg)


def test_png_folder_reads_a_csv_with_a_byte_order_mark_and_names_one_that_is_not_utf8(tmp_path: Path) -> None:
    _png_folder(tmp_path)
    text = (tmp_path / "labels.csv").read_text()
    (tmp_path / "labels.csv").write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert len(load_png_folder(str(tmp_path)).train) > 0  # the BOM is not part of the column name 'filename'
    (tmp_path / "labels.csv").write_bytes(text.replace("caption", "l\xe9gende").encode("latin-1"))
    with pytest.raises(ModalityDataError, match=r"labels.csv: the labels CSV is not UTF-8 text .*save it as UTF-8"):
        load_png_folder(str(tmp_path))


def test_png_folder_refuses_a_decompression_bomb_naming_the_file_and_line(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    _png_folder(tmp_path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20)  # an 8x8 image is then "too large" (64 > 2 x 20 pixels)
    with pytest.raises(ModalityDataError, match=r"img0.png \(.*labels.csv, line 2\): refused: the image is too "
                                                r"large to decode safely"):
        load_png_folder(str(tmp_path))


def test_a_holdout_keeps_the_last_training_examples_out_of_training_as_the_validation_split() -> None:
    from mtd_core.data.build import load_dataset

    whole = load_dataset({"name": "digits", "seed": 0}, get_registry())
    held = load_dataset({"name": "digits", "seed": 0, "holdout": 100}, get_registry())
    train, val = held.splits.train.fields["image"], held.splits.val.fields["image"]  # type: ignore[union-attr]
    everything = whole.splits.train.fields["image"]  # type: ignore[attr-defined]
    assert len(train) == len(everything) - 100 and len(val) == 100 and whole.splits.val is None
    assert torch.equal(train, everything[:-100]) and torch.equal(val, everything[-100:])  # disjoint, deterministic
    assert held.info["val_size"] == 100 and held.info["train_size"] == len(train)
    assert torch.equal(held.splits.test.fields["image"], whole.splits.test.fields["image"])  # type: ignore[attr-defined]


@pytest.mark.parametrize("holdout, pattern", [
    (-1, r"dataset.holdout: expected an integer >= 0"),
    (2.5, r"dataset.holdout: expected an integer >= 0"),
    (True, r"dataset.holdout: expected an integer >= 0"),
    (100_000, r"dataset.holdout = 100000 leaves nothing to train on: the training split has \d+ examples"),
])
def test_a_bad_holdout_is_a_clear_error(holdout: object, pattern: str) -> None:
    from mtd_core.data.build import load_dataset

    with pytest.raises(ConfigError, match=pattern):
        load_dataset({"name": "digits", "holdout": holdout}, get_registry())


def test_a_holdout_of_a_dataset_not_in_memory_slices_it_without_loading_it() -> None:
    from mtd_core.data.splits import DatasetSplits, hold_out

    class Lazy(torch.utils.data.Dataset):  # a plugin's dataset: items on demand
        def __len__(self) -> int:
            return 10

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            return {"x": torch.tensor(i)}

    splits = hold_out(DatasetSplits(train=Lazy(), test=Lazy()), 3, "dataset")
    assert [int(splits.train[i]["x"]) for i in range(len(splits.train))] == list(range(7))
    assert [int(splits.val[i]["x"]) for i in range(len(splits.val))] == [7, 8, 9]  # type: ignore[index,arg-type]
    with pytest.raises(IndexError):
        splits.val[3]  # type: ignore[index]
    with pytest.raises(ConfigError, match="already has a validation split; drop holdout"):
        hold_out(splits, 1, "dataset")
