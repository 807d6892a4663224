import importlib
from pathlib import Path

import numpy as np
import pytest
from helpers import BAD_IMAGE_ROWS, png_bomb, save_png, write_bad_images, write_dicom, xray
from PIL import Image

from cxrgen.imaging import ImageConfig, ImageRejected, convert, convert_file, decode, measure
from cxrgen.imaging import transforms as T


def gradient(h=200, w=160, lo=1000, hi=5000):
    return np.tile(np.linspace(lo, hi, w), (h, 1)).astype(np.uint16)


def test_16bit_png_uses_the_full_depth(tmp_path):
    pixels = gradient()  # 12-bit values: dropping the low byte would leave ~16 gray levels
    d = decode(save_png(tmp_path / "g.png", pixels))
    assert d.image.mode == "I" and d.pixels.max() == 5000
    assert measure(d, ImageConfig(resolution=64))[0].contrast > 0.4  # against 13 bits (5000), not 16
    out = convert(d, ImageConfig(resolution=128, crop_border=False)).image
    row = out[64, 16:-16]  # inside the side padding
    assert len(np.unique(row)) > 60 and np.all(np.diff(row.astype(int)) >= 0)
    assert out.dtype == np.uint8 and out.shape == (128, 128)


def test_8bit_png_jpeg_and_grey_rgb(tmp_path):
    img8 = xray(bits=8)
    assert decode(save_png(tmp_path / "a.png", img8)).image.mode == "F"  # 8-bit: float keeps averaged values
    Image.fromarray(img8).save(tmp_path / "b.jpg", quality=95)
    Image.fromarray(img8).convert("RGB").save(tmp_path / "c.jpg", quality=95)
    for name in ("b.jpg", "c.jpg"):
        d = decode(tmp_path / name)
        assert d.pixels.ndim == 2 and d.high == 255 and d.kind == "jpeg"
    rgb = np.stack([img8, img8 // 2, img8], axis=2)
    Image.fromarray(rgb).save(tmp_path / "d.png")
    with pytest.raises(ImageRejected, match="colour"):
        decode(tmp_path / "d.png")


def test_32bit_integer_images_within_16_bits(tmp_path):
    Image.fromarray(gradient().astype(np.int32), "I").save(tmp_path / "i.tif")
    assert decode(tmp_path / "i.tif").pixels.max() == 5000
    Image.fromarray((gradient().astype(np.int32) * 100), "I").save(tmp_path / "big.tif")
    with pytest.raises(ImageRejected, match="outside 0..65535"):
        decode(tmp_path / "big.tif")


def test_dicom_monochrome1_rescale_and_window(tmp_path):
    pixels = gradient(lo=0, hi=4095)
    plain = decode(write_dicom(tmp_path / "m2.dcm", pixels))
    inverted = decode(write_dicom(tmp_path / "m1.dcm", pixels, monochrome1=True))
    assert plain.pixels[0, 0] < plain.pixels[0, -1] and inverted.pixels[0, 0] > inverted.pixels[0, -1]
    a = convert(plain, ImageConfig(resolution=64, aspect="crop", crop_border=False)).image
    b = convert(inverted, ImageConfig(resolution=64, aspect="crop", crop_border=False)).image
    assert np.abs(a.astype(int) + b.astype(int) - 255).max() <= 2  # mirror images
    rescaled = decode(write_dicom(tmp_path / "r.dcm", pixels, slope=2.0, intercept=-1024.0))
    assert rescaled.pixels.min() == -1024 and rescaled.pixels.max() == 2 * 4095 - 1024
    assert (rescaled.low, rescaled.high) == (-1024, 2 * 4095 - 1024)
    windowed = decode(write_dicom(tmp_path / "w.dcm", pixels, window=(1000, 500)))
    assert np.count_nonzero(windowed.pixels == windowed.pixels.max()) > pixels.size * 0.6  # above the window
    raw = decode(tmp_path / "w.dcm", dicom_voi=False)
    assert raw.pixels.max() == 4095


def test_dicom_lut_sequences(tmp_path, recwarn):
    """Modality and VOI LUTs given as tables (not slope/intercept or a window): values index the table."""
    import pydicom
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    pixels = gradient(lo=0, hi=4095)

    def with_lut(name: str, keyword: str, table: list[int], bits: int) -> Path:
        path = write_dicom(tmp_path / name, pixels)
        ds = pydicom.dcmread(path)
        item = Dataset()
        item.LUTDescriptor = [4096, 0, bits]
        item.add_new(0x00283006, "US", table)  # LUTData
        if keyword == "ModalityLUTSequence":
            item.ModalityLUTType = "US"
        setattr(ds, keyword, Sequence([item]))
        ds.save_as(path)
        return path

    doubled = decode(with_lut("modality.dcm", "ModalityLUTSequence", [2 * v for v in range(4096)], 16))
    assert doubled.pixels.max() == 2 * 4095 and (doubled.low, doubled.high) == (0, 2 * 4095)
    clipped = decode(with_lut("voi.dcm", "VOILUTSequence", [min(4095, 2 * v) for v in range(4096)], 12))
    assert clipped.pixels.max() == 4095 and np.count_nonzero(clipped.pixels == 4095) > pixels.size * 0.4
    assert not [w for w in recwarn if "LUT" in str(w.message)]  # integers in, as the tables want


@pytest.mark.parametrize("name,reason", [(k, v) for k, v in BAD_IMAGE_ROWS.items() if v.startswith("image")])
def test_bad_files_are_rejected_with_reason(tmp_path_factory, name, reason):
    root = tmp_path_factory.mktemp("bad")
    write_bad_images(root)
    with pytest.raises(ImageRejected) as info:
        decode(root / "0" / name)
    assert info.value.reason.startswith(reason)


def test_pixel_limit(tmp_path):
    path = save_png(tmp_path / "x.png", xray(200, 160))
    with pytest.raises(ImageRejected, match="pixel limit"):
        decode(path, max_pixels=1000)
    with pytest.raises(ImageRejected, match="decompression bomb"):
        decode(png_bomb(tmp_path / "bomb.png", 20000, 20000))


def test_percentiles_histogram_matches_numpy():
    rng = np.random.default_rng(0)
    values = rng.integers(0, 65536, 10_000).astype(np.uint16)
    fast = T.percentiles(values, (1, 50, 99))
    slow = np.percentile(values, (1, 50, 99), method="lower")
    assert np.allclose(fast, slow, atol=40)


def test_content_box_finds_black_borders():
    img = np.zeros((400, 300), np.uint16)
    img[40:380, 30:250] = np.maximum(xray(340, 220), 3000)  # content without borders of its own
    img[5:15, 5:25] = 60000  # a burned-in marker in the border
    assert T.content_box(img, *T.percentiles(img, (0.5, 99.5))) == (31, 41, 249, 379)  # one pixel inside


def test_border_crop_in_conversion():
    img = np.zeros((800, 600), np.uint16)
    img[100:700, 100:500] = 20000
    img[100:700, 100:300] = 40000  # the left half of the content is bright
    out = convert(decode_array(img), ImageConfig(resolution=64, aspect="crop")).image
    assert out[:, 2:30].mean() > 250 and out[:, 34:62].mean() < 5  # the bright and dark halves, no border


def test_pad_and_crop_keep_aspect():
    img = np.zeros((400, 200), np.uint16)
    img[:, :] = 1000
    img[:, 100:] = 3000  # left half dark, right half bright
    padded = convert(decode_array(img), ImageConfig(resolution=64, aspect="pad", crop_border=False)).image
    assert padded.shape == (64, 64) and padded[:, :15].max() == 0 and padded[:, -15:].max() == 0  # side bars
    cropped = convert(decode_array(img), ImageConfig(resolution=64, aspect="crop", crop_border=False)).image
    assert cropped[:, :30].mean() < 10 and cropped[:, 34:].mean() > 245  # the centered square of both halves


def decode_array(pixels):
    from cxrgen.imaging import Decoded

    return Decoded.from_array(pixels, 0.0, 65535.0, "test")


def test_window_and_pad_helpers():
    assert T.window(np.array([0.0, 5.0, 10.0]), 0, 10).tolist() == [0, 128, 255]
    assert T.window(np.array([3.0]), 5, 5).tolist() == [128]
    assert T.pad_square(np.ones((2, 4), np.uint8), 4)[:, 0].tolist() == [0, 1, 1, 0]
    assert T.fit_inside(200, 400, 64) == (32, 64)
    assert T.center_square((0, 0, 100, 40)) == (30, 0, 70, 40)


def test_convert_file_is_deterministic(tmp_path):
    path = save_png(tmp_path / "x.png", xray(300, 240, seed=3))
    a = convert_file(path, ImageConfig(resolution=128))
    b = convert_file(path, ImageConfig(resolution=128))
    assert np.array_equal(a.image, b.image) and a.stats == b.stats


def test_image_config_validation():
    from cxrgen.config import ConfigError

    with pytest.raises(ConfigError, match="multiple of 8"):
        ImageConfig(resolution=500)
    with pytest.raises(ConfigError, match="low < high"):
        ImageConfig(window_low=99, window_high=1)
    assert ImageConfig(resolution=256).digest() != ImageConfig(resolution=512).digest()


def test_png_writer_roundtrip_with_text(tmp_path):
    from cxrgen.imaging.png import encode_png, write_png

    rgb = np.stack([xray(bits=8), xray(bits=8, seed=1), xray(bits=8, seed=2)], axis=2)
    for pixels in (xray(bits=8), xray(bits=16), np.zeros((1, 1), np.uint8), rgb):
        path = write_png(tmp_path / "x.png", pixels, {"cxrgen": "SYNTHETIC", "note": "ünïcode"})
        im = Image.open(path)
        assert np.array_equal(np.asarray(im), pixels)
        assert im.text["cxrgen"] == "SYNTHETIC" and im.text["note"] == "ünïcode"
    with pytest.raises(ValueError, match="uint8 or uint16"):
        encode_png(np.zeros((2, 2, 4), np.uint8))


def test_16bit_fast_path_matches_plain_decoding(tmp_path, monkeypatch):
    decode_module = importlib.import_module("cxrgen.imaging.decode")

    path = save_png(tmp_path / "x.png", xray(300, 240, seed=5))
    fast = decode(path)
    monkeypatch.setattr(decode_module, "_decode_16bit_as_int32", lambda im: False)
    plain = decode(path)
    assert fast.image.mode == plain.image.mode == "I"
    assert np.array_equal(fast.pixels, plain.pixels)
    assert np.array_equal(fast.pixels, xray(300, 240, seed=5).astype(np.int32))
