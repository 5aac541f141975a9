"""No wrong answer in silence (data): each case reaches the dataset builders through a ``[dataset]`` table (as
``mtd train`` and ``mtd config show`` do) and must be an mtd error naming the file, row, field or key."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mtd_core.data import check_against_taskset, derive_batch, load_dataset, load_digits, resolve_dataset_config
from mtd_core.data.idx import write_idx
from mtd_core.errors import ConfigError, ModalityDataError
from mtd_core.plugins.registry import get_registry
from mtd_core.taskset import TaskSet


def _load(**table: object) -> object:
    return load_dataset(table, get_registry())


def _resolve(**table: object) -> object:
    return resolve_dataset_config(table, get_registry())


def _png_folder(root: Path, names: list[str]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(4):
        Image.fromarray(np.full((4, 4), 60 * i, np.uint8)).save(root / f"{i}.png")
    rows = [f"{name},{i % 2}" for i, name in enumerate(names)]
    (root / "labels.csv").write_text("filename,label\n" + "\n".join(rows) + "\n")


# -- 1: filenames outside the folder -------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["../outside.png", "sub/../../outside.png", "ABSOLUTE"])
def test_a_csv_filename_outside_the_folder_is_refused_naming_the_csv_line_and_name(tmp_path: Path,
                                                                                    name: str) -> None:
    outside = tmp_path / "outside.png"
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(outside)
    name = str(outside) if name == "ABSOLUTE" else name
    root = tmp_path / "imgs"
    _png_folder(root, ["0.png", "1.png", name, "3.png"])
    with pytest.raises(ModalityDataError) as e:
        _load(name="png_folder", folder=str(root))
    msg = str(e.value)
    assert f"{root / 'labels.csv'}, line 4: filename {name!r} points outside the folder" in msg


def test_a_csv_filename_inside_a_subfolder_is_read(tmp_path: Path) -> None:
    _png_folder(tmp_path, ["0.png", "1.png", "2.png", "3.png"])
    (tmp_path / "sub").mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "sub" / "x.png")
    (tmp_path / "labels.csv").write_text("filename,label\n0.png,0\n1.png,1\nsub/x.png,0\n3.png,1\n")
    s = _load(name="png_folder", folder=str(tmp_path), test_fraction=0.25).splits  # type: ignore[attr-defined]
    assert len(s.train) + len(s.test) == 4


def test_png_folder_line_numbers_count_blank_lines_of_the_csv(tmp_path: Path) -> None:
    _png_folder(tmp_path, [])
    (tmp_path / "labels.csv").write_text("filename,label\n0.png,0\n\n1.png,x\n")
    with pytest.raises(ModalityDataError, match=r"labels.csv, line 4: label 'x' is not an integer"):
        _load(name="png_folder", folder=str(tmp_path))


@pytest.mark.parametrize("label, pattern", [
    ("1_0", r"line 2: label '1_0' is not an integer"),        # Python's int() would read 10
    ("\u0663", r"line 2: label '\u0663' is not an integer"),  # an Arabic-Indic three: int() would read 3
    ("99999999999999999999", r"line 2: label 99999999999999999999 is too large"),
])
def test_png_folder_labels_are_plain_decimal_integers(tmp_path: Path, label: str, pattern: str) -> None:
    _png_folder(tmp_path, [])
    (tmp_path / "labels.csv").write_text(f"filename,label\n0.png,{label}\n1.png,1\n", encoding="utf-8")
    with pytest.raises(ModalityDataError, match=pattern):
        _load(name="png_folder", folder=str(tmp_path))


def test_png_folder_refuses_a_16_bit_image_rather_than_clipping_it(tmp_path: Path) -> None:
    _png_folder(tmp_path, ["0.png", "1.png", "2.png"])
    Image.fromarray(np.array([[0, 1000], [65535, 7]], np.uint16)).save(tmp_path / "1.png")
    with pytest.raises(ModalityDataError, match=r"1.png \(.*labels.csv, line 3\): image mode 'I;16'"):
        _load(name="png_folder", folder=str(tmp_path))


def test_png_folder_refuses_rows_with_a_wrong_number_of_cells(tmp_path: Path) -> None:
    _png_folder(tmp_path, [])
    (tmp_path / "labels.csv").write_text("filename,label\n0.png,0\n1.png,1,extra\n")
    with pytest.raises(ModalityDataError, match=r"labels.csv, line 3: 3 cell\(s\), but the header has 2 columns"):
        _load(name="png_folder", folder=str(tmp_path))


# -- 2: required options -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, key", [("npz", "path"), ("png_folder", "folder")])
def test_a_missing_required_option_is_a_config_error_naming_the_key(name: str, key: str) -> None:
    for check in (_resolve, _load):
        with pytest.raises(ConfigError, match=rf"dataset\.{key} is required \(expected a string\) but is not set"):
            check(name=name)
    with pytest.raises(ConfigError, match=rf"dataset\.{key}: expected a string, got 3 \(int\)"):
        _resolve(name=name, **{key: 3})


# -- 3: not an npz archive -----------------------------------------------------------------------------------
def test_an_npy_file_named_npz_is_not_an_npz_archive(tmp_path: Path) -> None:
    path = tmp_path / "data.npz"
    with open(path, "wb") as fh:
        np.save(fh, np.arange(4))
    with pytest.raises(ModalityDataError, match=rf"{path}: is a single \.npy array, not an npz archive"):
        _load(name="npz", path=str(path))


@pytest.mark.parametrize("content, what", [(b"hello world\n", "a file starting with b'hello wo'"),
                                           (b"", "an empty file")])
def test_a_text_or_empty_file_named_npz_is_not_an_npz_archive(tmp_path: Path, content: bytes, what: str) -> None:
    path = tmp_path / "data.npz"
    path.write_bytes(content)
    with pytest.raises(ModalityDataError) as e:
        _load(name="npz", path=str(path))
    assert f"{path}: is {what}, not an npz archive" in str(e.value) and "pickle" not in str(e.value)


def test_an_archive_member_that_is_not_an_npy_array_is_named(tmp_path: Path) -> None:
    path = tmp_path / "data.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("image.npy", b"not an array")
    with pytest.raises(ModalityDataError, match=r"data.npz: member 'image' of the archive is not a \.npy array"):
        _load(name="npz", path=str(path))


def test_an_archive_member_declaring_an_absurd_shape_is_named(tmp_path: Path) -> None:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|u1", "fortran_order": False, "shape": (2**62,)})
    with zipfile.ZipFile(tmp_path / "big.npz", "w") as z:
        z.writestr("image.npy", buf.getvalue() + bytes(10))
    with pytest.raises(ModalityDataError, match=r"big.npz: array 'image' is too large to load"):
        _load(name="npz", path=str(tmp_path / "big.npz"))


def test_a_folder_named_npz_is_not_a_file(tmp_path: Path) -> None:
    (tmp_path / "d.npz").mkdir()
    with pytest.raises(ModalityDataError, match=r"d.npz: is not a file"):
        _load(name="npz", path=str(tmp_path / "d.npz"))


# -- 4: string labels --------------------------------------------------------------------------------------
def test_string_labels_name_the_field_its_dtype_and_what_is_expected(tmp_path: Path) -> None:
    path = tmp_path / "s.npz"
    np.savez(path, image=np.zeros((8, 8, 8), np.uint8), label=np.array(["one", "two"] * 4))
    data = _load(name="npz", path=str(path), test_fraction=0.25)
    split = data.splits.train  # type: ignore[attr-defined]
    ts = TaskSet.from_config({"modalities": [{"kind": "image", "role": "base", "size": 8},
                                             {"kind": "label", "num_classes": 10}]})
    with pytest.raises(ModalityDataError) as e:
        check_against_taskset(ts, split.fields, split.source, split.where)
    msg = str(e.value)
    assert f"{path}: field 'label' holds text (dtype <U3, e.g. '" in msg
    assert "expects int64 numbers, one per example, in [0, 9]" in msg
    with pytest.raises(ModalityDataError, match=r"field 'label' holds values that are not a tensor \(dtype <U3"):
        derive_batch(ts, split.get_batch(torch.arange(2)))


# -- 5: dataset.seed ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [1.5, 3.0, "3", True, -1, 2**64, 2**70])
def test_a_seed_that_is_not_an_integer_in_the_64_bit_range_is_a_config_error(seed: object) -> None:
    pattern = r"dataset\.seed: expected an integer in 0\.\.18446744073709551615 \(0 to 2\*\*64 - 1\), got"
    for check in (_resolve, _load):
        with pytest.raises(ConfigError, match=pattern):
            check(name="digits", seed=seed)
    with pytest.raises(ConfigError, match=r"seed: expected an integer in 0\.\.18446744073709551615"):
        load_digits(seed=seed)  # type: ignore[arg-type]


def test_the_largest_64_bit_seed_is_accepted() -> None:
    assert _resolve(name="digits", seed=2**64 - 1).options["seed"] == 2**64 - 1  # type: ignore[attr-defined]
    assert len(load_digits(seed=2**64 - 1).test) == 359


@pytest.mark.parametrize("table, pattern", [
    ({"name": "digits", "test_fraction": "0.1"}, r"dataset\.test_fraction: expected a number, got '0\.1' \(str\)"),
    ({"name": "digits", "test_fraction": 1.0}, r"dataset\.test_fraction: expected a number strictly between"),
    ({"name": "fashion_mnist", "limit_train": 0}, r"dataset\.limit_train: expected a positive integer"),
    ({"name": "fashion_mnist", "limit_test": 2.5}, r"dataset\.limit_test: expected a positive integer"),
    ({"name": "png_folder", "folder": "x", "class_names": ["a", 1]}, r"dataset\.class_names: expected a list of"),
    ({"name": 5}, r"dataset\.name: expected the name of a registered dataset"),
])
def test_option_values_of_the_wrong_type_or_range_are_config_errors(table: dict, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        _resolve(**table)


# -- 6: uint64 labels ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [2**63, 2**64 - 1])
def test_a_uint64_label_beyond_int64_is_shown_with_its_true_value(tmp_path: Path, value: int) -> None:
    path = tmp_path / "u.npz"
    np.savez(path, image=np.zeros((6, 4, 4), np.uint8), label=np.array([0, 1, 2, value, 0, 1], np.uint64))
    with pytest.raises(ModalityDataError) as e:
        _load(name="npz", path=str(path))
    assert f"{path}, row 3: field 'label' (dtype uint64) has value {value}, too large for int64" in str(e.value)
    assert "-" not in str(e.value).split("value")[1].split(",")[0]


def test_uint64_labels_in_range_load_exactly_and_an_out_of_range_class_shows_its_integer(tmp_path: Path) -> None:
    path = tmp_path / "u.npz"
    np.savez(path, image=np.zeros((6, 4, 4), np.uint8), label=np.array([0, 1, 2, 123456789012, 0, 1], np.uint64))
    split = _load(name="npz", path=str(path), test_fraction=0.2).splits.train  # type: ignore[attr-defined]
    assert 123456789012 in split.fields["label"].tolist()
    ts = TaskSet.from_config({"modalities": [{"kind": "image", "role": "base", "size": 4},
                                             {"kind": "label", "num_classes": 10}]})
    with pytest.raises(ModalityDataError, match=r"u.npz, row 3: modality 'label' .*has value 123456789012, outside"):
        check_against_taskset(ts, split.fields, split.source, split.where)


def test_a_big_endian_npz_array_is_read_with_its_values(tmp_path: Path) -> None:
    path = tmp_path / "be.npz"
    np.savez(path, image=np.full((4, 2, 2), 0.5, ">f4"), label=np.array([3, 1, 2, 0], ">i8"))
    s = _load(name="npz", path=str(path), test_fraction=0.25).splits  # type: ignore[attr-defined]
    assert torch.all(s.train.fields["image"] == 0.5)
    assert sorted(s.train.fields["label"].tolist() + s.test.fields["label"].tolist()) == [0, 1, 2, 3]


# -- IDX ---------------------------------------------------------------------------------------------------------
def test_fashion_mnist_refuses_images_that_are_not_28x28_and_negative_or_float_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "t10k"):
        write_idx(tmp_path / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (3, 28, 28), dtype=np.uint8))
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte", np.array([0, 1, 2], np.uint8))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.array([0, -1, 2], np.int8))
    with pytest.raises(ModalityDataError, match=r"train-labels-idx1-ubyte: example 1 has label -1"):
        _load(name="fashion_mnist", folder=str(tmp_path))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.array([0, 1.5, 2], np.float32))
    with pytest.raises(ModalityDataError, match=r"train-labels-idx1-ubyte: expected integer labels"):
        _load(name="fashion_mnist", folder=str(tmp_path))
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((3, 8, 8), np.uint8))
    with pytest.raises(ModalityDataError, match=r"train-images-idx3-ubyte: expected uint8 images of shape \(N, 28"):
        _load(name="fashion_mnist", folder=str(tmp_path))


@pytest.mark.parametrize("key, value", [("keys", []), ("keys", None), ("transforms", None), ("transforms", ""),
                                        ("transforms", {})])
def test_empty_values_of_the_wrong_type_for_keys_and_transforms_are_not_taken_for_empty(key: str,
                                                                                       value: object) -> None:
    with pytest.raises(ConfigError, match=rf"dataset\.{key} must be a"):
        _resolve(name="digits", **{key: value})


def test_png_folder_class_names_must_name_every_label(tmp_path: Path) -> None:
    _png_folder(tmp_path, ["0.png", "1.png", "2.png"])
    (tmp_path / "labels.csv").write_text("filename,label\n0.png,0\n1.png,4\n2.png,1\n")
    with pytest.raises(ConfigError, match=r"labels.csv, line 3: label 4 has no name: class_names .* names 2 classes"):
        _load(name="png_folder", folder=str(tmp_path), class_names=["a", "b"])
