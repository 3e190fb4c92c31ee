"""Label-encoding detection, decoding and sparse references."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal

from changeclip.errors import InputError
from changeclip.evaluation.labels import Mask, detect_encoding, present_values, read_mask, sparse_reference


def write_png(path: Path, arr: np.ndarray) -> Path:
    drv = gdal.GetDriverByName("MEM")
    ds = drv.Create("", arr.shape[1], arr.shape[0], 1, gdal.GDT_Byte)
    ds.GetRasterBand(1).WriteArray(arr)
    gdal.GetDriverByName("PNG").CreateCopy(str(path), ds)
    return path


@pytest.mark.parametrize(("values", "name", "change", "ignore"), [
    ({0, 255}, "0/255", 255, []),
    ({255}, "0/255", 255, []),
    ({0, 1}, "0/1", 1, []),
    ({0}, "all-zero", 1, []),
    ({0, 1, 255}, "0/1", 1, [255]),
])
def test_detect(values: set[int], name: str, change: int, ignore: list[int]) -> None:
    enc = detect_encoding(values)
    assert (enc.name, enc.change_value, enc.ignore_values, enc.how) == (name, change, ignore, "detected")


@pytest.mark.parametrize("values", [{0, 128, 255}, {0, 1, 2}, {0, 2}, {3}])
def test_ambiguous_values_are_an_error_naming_the_options(values: set[int]) -> None:
    with pytest.raises(InputError, match="--label-encoding"):
        detect_encoding(values)


def test_forced_encoding_rejects_other_values() -> None:
    with pytest.raises(InputError, match="--ignore-value 1"):
        detect_encoding({0, 1, 255}, "0/255")
    enc = detect_encoding({0, 255}, "0/255", ignore_values=[7])
    assert enc.how == "given" and enc.ignore_values == [7]


def test_01_labels_are_not_misread_as_no_change() -> None:
    # the official loader's pitfall: 0/1 // 255 == all zero. We detect 0/1 and keep the change.
    mask = Mask(np.array([[0, 1], [1, 0]], np.uint8))
    enc = detect_encoding(present_values(mask))
    change, valid = enc.decode(mask)
    assert change.tolist() == [[False, True], [True, False]] and valid.all()


def test_decode_honours_nodata_and_ignore() -> None:
    mask = Mask(np.array([[0, 255, 7], [9, 0, 255]], np.uint8), nodata=9)
    assert present_values(mask, [7]) == {0, 255}
    enc = detect_encoding(present_values(mask, [7]), ignore_values=[7])
    change, valid = enc.decode(mask)
    assert valid.tolist() == [[True, True, False], [False, True, True]]
    assert change.tolist() == [[False, True, False], [False, False, True]]


def test_decode_rejects_stray_value() -> None:
    enc = detect_encoding({0, 255})
    with pytest.raises(InputError, match=r"\[3\]"):
        enc.decode(Mask(np.array([[0, 3]], np.uint8)))


def test_read_mask_png_and_multiband(tmp_path: Path) -> None:
    arr = np.array([[0, 255], [255, 0]], np.uint8)
    m = read_mask(write_png(tmp_path / "a.png", arr))
    assert m.values.tolist() == arr.tolist() and m.geotransform is None
    ds = gdal.GetDriverByName("MEM").Create("", 2, 2, 3, gdal.GDT_Byte)
    for i in range(3):
        ds.GetRasterBand(i + 1).WriteArray(arr if i < 2 else arr // 255)
    gdal.GetDriverByName("PNG").CreateCopy(str(tmp_path / "rgb.png"), ds)
    with pytest.raises(InputError, match="bands that differ"):
        read_mask(tmp_path / "rgb.png")
    with pytest.raises(InputError, match="cannot read"):
        read_mask(tmp_path / "missing.png")


def test_sparse_reference() -> None:
    ch = Mask(np.array([[255, 0, 0], [0, 0, 0]], np.uint8))
    un = Mask(np.array([[0, 255, 0], [255, 0, 0]], np.uint8))
    change, valid = sparse_reference(ch, un)
    assert valid.tolist() == [[True, True, False], [True, False, False]]
    assert change.tolist() == [[True, False, False], [False, False, False]]
    with pytest.raises(InputError, match="both changed and unchanged"):
        sparse_reference(ch, ch)
    with pytest.raises(InputError, match="no pixel"):
        z = Mask(np.zeros((2, 3), np.uint8))
        sparse_reference(z, z)


def test_taizhou_sparse_masks(data_dir: Path) -> None:
    root = data_dir / "geotiff/ChenHongruixuan_ChangeDetectionRepository/Taizhou"
    change, valid = sparse_reference(read_mask(root / "change.bmp"), read_mask(root / "unchanged.bmp"))
    assert int(change.sum()) == 4227
    assert int(valid.sum()) == 4227 + 17163
