"""Grey pictures in colour containers (RGB JPEG, RGBA, grey+alpha, palette) are converted; colour is refused."""

import numpy as np
import pytest
from helpers import GREY_PALETTE, colour_photo, save_grey_rgb_jpeg, xray
from PIL import Image, ImageFilter

from cxrgen.imaging import ImageRejected, decode
from cxrgen.imaging.decode import GREY_SPREAD_P99, channel_spread_p99


def grey(h: int = 240, w: int = 200, seed: int = 0) -> np.ndarray:
    return xray(h, w, seed=seed, bits=8)


def spread(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(int)
    return rgb.max(axis=2) - rgb.min(axis=2)


def test_grey_rgb_jpeg_with_chroma_noise_is_its_grey(tmp_path):
    pixels = np.asarray(Image.fromarray(grey()).filter(ImageFilter.GaussianBlur(1.5)))  # JPEG keeps it well
    path = save_grey_rgb_jpeg(tmp_path / "a.jpg", pixels)
    stored = np.asarray(Image.open(path))
    assert stored.ndim == 3 and spread(stored).max() > 20  # the old rule (any spread over 2) refused it
    assert np.percentile(spread(stored), 99) <= GREY_SPREAD_P99
    d = decode(path)
    assert d.image.mode == "F" and (d.low, d.high) == (0.0, 255.0) and d.kind == "jpeg"
    arrow = np.zeros(pixels.shape, bool)
    arrow[70:90, 40:65] = True  # the arrow is not grey
    diff = np.abs(d.pixels - pixels)[~arrow]
    # the channel mean: one channel alone keeps all its noise (sigma 3, a mean difference near 2.4)
    assert diff.mean() < 2 and np.percentile(diff, 99) <= 6
    exact = np.asarray(Image.fromarray(np.stack([pixels] * 3, axis=2)).convert("RGB"))
    Image.fromarray(exact).save(tmp_path / "b.png")
    assert np.array_equal(decode(tmp_path / "b.png").pixels, pixels.astype(np.float32))


@pytest.mark.parametrize("kind", ["photo", "colour map", "tint", "overlay"])
def test_colour_is_rejected(tmp_path, kind):
    g = grey().astype(int)
    if kind == "photo":
        rgb = colour_photo()
    elif kind == "colour map":  # a heat map of the X-ray
        rgb = np.stack([g, np.abs(128 - g) * 2, 255 - g], axis=2)
    elif kind == "tint":  # sepia
        rgb = np.stack([g, g * 9 // 10, g * 3 // 4], axis=2)
    else:  # a colour overlay on a tenth of a grey X-ray
        rgb = np.stack([g, g, g], axis=2)
        rgb[:24, :, 0] = np.minimum(255, rgb[:24, :, 0] + 60)
    path = tmp_path / "c.png"
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(path)
    with pytest.raises(ImageRejected) as info:
        decode(path)
    assert info.value.reason.startswith("image: colour RGB image") and info.value.lasting
    assert "grayscale" in info.value.reason and "\n" not in info.value.reason
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(tmp_path / "c.jpg", quality=85)
    with pytest.raises(ImageRejected, match="^image: colour"):
        decode(tmp_path / "c.jpg")


def test_rgba_is_composited_on_black(tmp_path):
    pixels = grey()
    alpha = np.tile(np.linspace(0, 255, pixels.shape[1]), (pixels.shape[0], 1)).astype(np.uint8)
    alpha[:, :10] = 0
    rgba = np.stack([pixels, pixels, pixels, alpha], axis=2)
    rgba[:, :10, :3] = (255, 0, 0)  # colour where fully transparent: not seen, so not colour
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    d = decode(tmp_path / "a.png")
    expected = pixels * (alpha / 255.0)
    assert d.image.mode == "F" and d.high == 255.0
    assert np.abs(d.pixels - expected).max() <= 1 and np.all(d.pixels[:, :10] == 0)
    opaque = rgba.copy()
    opaque[..., 3], opaque[:, :10, :3] = 255, pixels[:, :10, None]
    Image.fromarray(opaque, "RGBA").save(tmp_path / "b.png")
    assert np.array_equal(decode(tmp_path / "b.png").pixels, pixels.astype(np.float32))
    coloured = np.concatenate([colour_photo(), np.full(pixels.shape + (1,), 255, np.uint8)], axis=2)
    Image.fromarray(coloured, "RGBA").save(tmp_path / "c.png")
    with pytest.raises(ImageRejected, match="^image: colour RGBA image"):
        decode(tmp_path / "c.png")


def test_grey_with_alpha(tmp_path):
    pixels = grey()
    alpha = np.full(pixels.shape, 255, np.uint8)
    alpha[:, : pixels.shape[1] // 2] = 128
    Image.fromarray(np.stack([pixels, alpha], axis=2), "LA").save(tmp_path / "a.png")
    d = decode(tmp_path / "a.png")
    expected = pixels * (alpha / 255.0)
    assert d.image.mode == "F" and np.abs(d.pixels - expected).max() <= 1
    assert Image.open(tmp_path / "a.png").mode == "LA"


def test_palette_images(tmp_path):
    pixels = grey()
    p = Image.fromarray(pixels, "L").convert("P", palette=Image.Palette.ADAPTIVE, colors=256)
    p.putpalette(GREY_PALETTE)
    p.putdata(pixels.ravel().tolist())  # index i is grey level i
    p.save(tmp_path / "grey.png")
    assert Image.open(tmp_path / "grey.png").mode == "P"
    assert np.array_equal(decode(tmp_path / "grey.png").pixels, pixels.astype(np.float32))

    p.info["transparency"] = int(pixels[0, 0])  # the corner's level is transparent: black
    p.save(tmp_path / "clear.png", transparency=int(pixels[0, 0]))
    d = decode(tmp_path / "clear.png").pixels
    assert d[0, 0] == 0 and np.array_equal(d[pixels != pixels[0, 0]], pixels[pixels != pixels[0, 0]])

    Image.fromarray(colour_photo()).quantize(64).save(tmp_path / "colour.png")
    assert Image.open(tmp_path / "colour.png").mode == "P"
    with pytest.raises(ImageRejected, match="^image: colour P image"):
        decode(tmp_path / "colour.png")


def test_spread_percentile_sampling_and_threshold():
    g = grey(1500, 1400)
    rgb = np.stack([g, g, g], axis=2)
    rgb[:, :14, 0] = 255  # 1% of the pixels: the 99th percentile still sees grey
    assert channel_spread_p99(Image.fromarray(rgb)) <= 1
    rgb[:, :20, 0] = 255  # 1.4%: it sees the colour (and sampling a million of 2.1 million pixels agrees)
    assert channel_spread_p99(Image.fromarray(rgb)) > 100
    shifted = np.clip(np.stack([g.astype(int) + GREY_SPREAD_P99 + 1, g, g], axis=2), 0, 255).astype(np.uint8)
    assert channel_spread_p99(Image.fromarray(shifted)) == GREY_SPREAD_P99 + 1


def test_unsupported_modes_still_say_so(tmp_path):
    Image.new("CMYK", (64, 64), (10, 20, 30, 40)).save(tmp_path / "a.jpg")
    with pytest.raises(ImageRejected, match="^image: unsupported mode CMYK"):
        decode(tmp_path / "a.jpg")
