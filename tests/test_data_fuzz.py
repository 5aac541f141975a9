"""Property: malformed npz, PNG-folder and IDX inputs (wrong dtypes, shapes, encodings, file types; truncated,
empty, a folder where a file belongs) go through the dataset builders of a ``[dataset]`` table, and every failure
is an mtd error whose message names the file; nothing else (a bare ValueError, TypeError, OSError or KeyError from
numpy or Pillow) escapes."""

from __future__ import annotations

import gzip
import io
import tempfile
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from mtd_core.data import check_against_taskset, load_dataset
from mtd_core.data.idx import write_idx
from mtd_core.data.splits import ArrayDataset
from mtd_core.errors import MTDError
from mtd_core.plugins.registry import get_registry
from mtd_core.taskset import TaskSet

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TASKSET = TaskSet.from_config({"modalities": [{"kind": "image", "role": "base", "size": 4},
                                              {"kind": "label", "num_classes": 10}]})

DTYPES = ["u1", "i1", "<i2", ">i2", "<u2", "<i4", "<u4", "<i8", ">i8", "<u8", ">u8", "<f2", "<f4", ">f4", "<f8", "?",
          "<c8", "<U3", "S3", "<M8[s]", "V4"]


# -- building blocks ------------------------------------------------------------------------------------------
@st.composite
def arrays(draw: st.DrawFn) -> np.ndarray:
    """An array of any dtype in DTYPES and rank 0..5 (small), its bytes drawn (so NaN, inf, huge values...)."""
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    shape = tuple(draw(st.lists(st.integers(0, 4), max_size=5)))
    n = int(np.prod(shape, dtype=np.int64))
    if dtype.kind == "U":
        return np.array(draw(st.lists(st.text(max_size=3), min_size=n, max_size=n)), dtype=dtype).reshape(shape)
    raw = draw(st.binary(min_size=n * dtype.itemsize, max_size=n * dtype.itemsize))
    return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()


@st.composite
def plausible_fields(draw: st.DrawFn) -> dict[str, np.ndarray]:
    """Image and label arrays of one length that nearly fit the task set: drawn dtypes and values (strings,
    uint64 beyond int64, negative or too-large classes, NaN pixels), so the checks after loading run too."""
    n = draw(st.integers(2, 6))
    pixel = draw(st.sampled_from([0, 1, 200, -0.5, 3.0, float("nan")]))
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        image = np.full((n, 4, 4), pixel).astype(draw(st.sampled_from(["u1", "<f4", ">f8", "<f2", "<i2"])))
    dtype = np.dtype(draw(st.sampled_from(["<i8", ">i4", "<u8", ">u8", "u1", "<U3", "<f8"])))
    if dtype.kind == "U":
        label = np.array(draw(st.lists(st.text(max_size=3), min_size=n, max_size=n)), dtype=dtype)
    elif dtype.kind == "f":
        label = np.array(draw(st.lists(st.floats(-2, 12), min_size=n, max_size=n)), dtype=dtype)
    else:
        info = np.iinfo(dtype)
        ints = st.one_of(st.integers(0, 12), st.integers(int(info.min), int(info.max)))
        label = np.array(draw(st.lists(ints, min_size=n, max_size=n)), dtype=object).astype(dtype)
    return {"image": image, "label": label}


def _mutate(data: bytes, how: str, cut: int, flip: int) -> bytes:
    """``data`` truncated, with a flipped byte, or replaced (empty, text, random)."""
    if how == "truncate":
        return data[: cut % max(1, len(data))]
    if how == "flip" and data:
        i = flip % len(data)
        return data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:]
    return {"empty": b"", "text": b"hello, world\n", "garbage": bytes(range(7, 60))}.get(how, data)


MUTATIONS = st.sampled_from(["keep", "truncate", "flip", "empty", "text", "garbage"])


def _expect_mtd_error_naming(where: str, load: Callable[[], object]) -> None:
    """Run ``load``: it succeeds (and then the data passes or fails the task-set check cleanly), or raises an
    MTDError whose message contains ``where``."""
    try:
        data = load()
        for split in (data.splits.train, data.splits.test):  # type: ignore[attr-defined]
            if isinstance(split, ArrayDataset):
                check_against_taskset(TASKSET, split.fields, split.source, split.where)
    except MTDError as e:
        assert where in str(e), f"the message does not name {where!r}: {e}"
    # anything else propagates and fails the test


# -- npz ----------------------------------------------------------------------------------------------------------
@st.composite
def npz_bytes(draw: st.DrawFn) -> bytes:
    """An npz archive (plain or compressed) of drawn arrays, a .npy file, or a zip of something else; mutated."""
    kind = draw(st.sampled_from(["savez", "savez_compressed", "npy", "zip_of_text", "huge_header"]))
    buf = io.BytesIO()
    fields = draw(st.one_of(plausible_fields(), st.dictionaries(st.sampled_from(["image", "label", "rep", "caption"]),
                                                                 arrays(), max_size=3)))
    if kind == "npy":
        np.save(buf, draw(arrays()))
    elif kind == "huge_header":  # a member whose header declares far more data than it holds
        header = io.BytesIO()
        shape = (draw(st.sampled_from([2**31, 2**40, 2**62])),)
        np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": shape})
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr("image.npy", header.getvalue() + bytes(8))
    elif kind == "zip_of_text":
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr(draw(st.sampled_from(["image.npy", "label.txt"])), draw(st.binary(max_size=20)))
    else:
        getattr(np, kind)(buf, **fields)
    return _mutate(buf.getvalue(), draw(MUTATIONS), draw(st.integers(0, 10**6)), draw(st.integers(0, 10**6)))


@FUZZ
@given(content=npz_bytes(), folder=st.integers(0, 7).map(lambda i: i == 7), channels_last=st.booleans(),
       test_file=st.booleans())
def test_any_npz_input_loads_or_fails_with_an_mtd_error_naming_the_file(content: bytes, folder: bool,
                                                                       channels_last: bool, test_file: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data.npz"
        path.mkdir() if folder else path.write_bytes(content)
        table: dict[str, object] = {"name": "npz", "path": str(path), "channels_last": channels_last,
                                    "test_fraction": 0.4}
        if test_file:
            table["test_path"] = str(path)
        _expect_mtd_error_naming(str(path), lambda: load_dataset(table, get_registry()))


def test_a_valid_npz_still_loads() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ok.npz"
        np.savez(path, image=np.zeros((5, 4, 4), np.uint8), label=np.arange(5) % 3)
        data = load_dataset({"name": "npz", "path": str(path), "test_fraction": 0.2}, get_registry())
        assert len(data.splits.train) == 4


# -- PNG folder ------------------------------------------------------------------------------------------------
def _png_bytes(mode: str, size: tuple[int, int], fmt: str) -> bytes:
    a = np.arange(size[0] * size[1]).reshape(size[1], size[0])
    im = Image.fromarray((a * 1000).astype(np.uint16)) if mode == "I;16" else \
        Image.fromarray((a % 256).astype(np.uint8)).convert(mode)
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


@st.composite
def image_files(draw: st.DrawFn) -> bytes | None:
    """A PNG of some mode and size (or a GIF/BMP named .png), possibly mutated; None: a folder of that name."""
    if draw(st.integers(0, 9)) == 9:
        return None
    mode = draw(st.sampled_from(["L", "RGB", "RGBA", "P", "1", "I;16"]))
    fmt = "PNG" if mode == "I;16" else draw(st.sampled_from(["PNG", "PNG", "PNG", "GIF", "BMP"]))
    data = _png_bytes(mode, draw(st.sampled_from([(4, 4), (4, 4), (5, 4)])), fmt)
    how = draw(st.sampled_from(["keep", "keep", "keep", "truncate", "flip", "empty", "text", "garbage"]))
    return _mutate(data, how, draw(st.integers(0, 10**6)), draw(st.integers(0, 10**6)))


CELLS = st.one_of(st.sampled_from(["0", "1", "9", "-1", " 2 ", "1.5", "x", "", "1_0", "99999999999999999999",
                                   "0.png", "../0.png", "/etc/passwd", "sub", "missing.png", "train", "test", "val",
                                   "a, \"quoted\" caption", "caf\u00e9"]), st.text(max_size=4))


@st.composite
def csv_bytes(draw: st.DrawFn, n_images: int) -> bytes:
    """A labels CSV: mostly well-formed rows naming the images, some rows of drawn cells (bad labels, names outside
    the folder, missing files, wrong splits, a wrong number of cells), in some encoding; maybe mutated."""
    header = draw(st.sampled_from([["filename", "label"], ["filename", "label", "caption"],
                                   ["filename", "label", "split"], ["file", "label"], ["filename", "label", "label"]]))
    extra = {"caption": st.sampled_from(["a cat", "", "caf\u00e9"]), "split": st.sampled_from(["train", "test"])}
    rows = []
    for i in range(draw(st.integers(2, n_images + 2))):
        if draw(st.integers(0, 3)) < 3:  # a good row
            rows.append([f"{i % n_images}.png", str(i % 3)] + [draw(extra.get(c, st.just("x"))) for c in header[2:]])
        else:
            rows.append(draw(st.lists(CELLS, min_size=len(header) - 1, max_size=len(header) + 1)))
    text = "\n".join(",".join(r) for r in [header, *rows]) + "\n"
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "utf-8", "utf-8-sig", "latin-1", "utf-16"]))
    data = text.encode(encoding, errors="replace")
    return _mutate(data, draw(st.sampled_from(["keep", "keep", "keep", "truncate", "flip", "empty"])),
                   draw(st.integers(0, 10**6)), draw(st.integers(0, 10**6)))


@FUZZ
@given(data=st.data(), images=st.lists(image_files(), min_size=1, max_size=4),
       csv_is_folder=st.integers(0, 9).map(lambda i: i == 9), channels=st.sampled_from([1, 3]))
def test_any_png_folder_input_loads_or_fails_with_an_mtd_error_naming_the_file(
        data: st.DataObject, images: list[bytes | None], csv_is_folder: bool, channels: int) -> None:
    csv_content = data.draw(csv_bytes(len(images)))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "imgs"
        (root / "sub").mkdir(parents=True)
        for i, content in enumerate(images):
            (root / f"{i}.png").mkdir() if content is None else (root / f"{i}.png").write_bytes(content)
        csv_path = root / "labels.csv"
        csv_path.mkdir() if csv_is_folder else csv_path.write_bytes(csv_content)
        table = {"name": "png_folder", "folder": str(root), "channels": channels, "test_fraction": 0.5}
        _expect_mtd_error_naming(str(root), lambda: load_dataset(table, get_registry()))


# -- IDX (Fashion-MNIST) ------------------------------------------------------------------------------------
FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


@st.composite
def idx_bytes(draw: st.DrawFn) -> bytes:
    """An IDX file of drawn dtype and shape, or one with a wrong magic, a bad type code, dims that disagree with
    its size; maybe gzip-compressed; mutated."""
    a = draw(arrays().filter(lambda a: a.dtype.newbyteorder("=") in {np.dtype(t) for t in
                                                                      ("u1", "i1", "i2", "i4", "f4", "f8")}))
    buf = io.BytesIO()
    with tempfile.TemporaryDirectory() as tmp:
        write_idx(Path(tmp) / "x", a)
        data = (Path(tmp) / "x").read_bytes()
    trick = draw(st.sampled_from(["none", "none", "magic", "code", "dims", "rank"]))
    if trick == "magic":
        data = b"\x01\x00" + data[2:]
    elif trick == "code":
        data = data[:2] + bytes([draw(st.integers(0, 255))]) + data[3:]
    elif trick == "dims" and len(data) >= 8:
        data = data[:4] + draw(st.binary(min_size=4, max_size=4)) + data[8:]
    elif trick == "rank":
        data = data[:3] + bytes([draw(st.integers(0, 255))]) + data[4:]
    if draw(st.booleans()):
        with gzip.GzipFile(fileobj=buf, mode="wb") as fh:
            fh.write(data)
        data = buf.getvalue()
    return _mutate(data, draw(st.sampled_from(["keep", "keep", "truncate", "flip", "empty"])),
                   draw(st.integers(0, 10**6)), draw(st.integers(0, 10**6)))


@FUZZ
@given(which=st.sampled_from(FILES), content=idx_bytes(), as_folder=st.integers(0, 7).map(lambda i: i == 7),
       gz=st.booleans(),
       limit=st.sampled_from([None, 1, 2]))
def test_any_idx_input_loads_or_fails_with_an_mtd_error_naming_the_file(which: str, content: bytes,
                                                                        as_folder: bool, gz: bool,
                                                                        limit: int | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rng = np.random.default_rng(0)
        sfx = ".gz" if gz else ""
        for name in FILES:
            a = rng.integers(0, 256, (3, 28, 28), dtype=np.uint8) if "images" in name else np.arange(3, dtype=np.uint8)
            write_idx(root / f"{name}{sfx}", a)
        target = root / f"{which}{sfx}"
        target.unlink()
        target.mkdir() if as_folder else target.write_bytes(content)
        table = {"name": "fashion_mnist", "folder": str(root), "limit_train": limit}
        _expect_mtd_error_naming(str(root), lambda: load_dataset(table, get_registry()))


@pytest.mark.parametrize("content", [b"", b"\x00\x00\x08", b"\x00\x00\x08\x01\x00\x00", b"\x1f\x8b\x08\x00junk"])
def test_truncated_idx_files_are_named(content: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        from mtd_core.data import read_idx

        path = Path(tmp) / "t10k-labels-idx1-ubyte"
        path.write_bytes(content)
        with pytest.raises(MTDError, match="t10k-labels-idx1-ubyte"):
            read_idx(path)
