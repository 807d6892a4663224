import numpy as np
from helpers import xray

from cxrgen.imaging import Decoded, ImageConfig, measure
from cxrgen.prepare.qc import QCConfig, contact_sheet, qc_flags


def flags_of(pixels, high=65535.0):
    stats, *_ = measure(Decoded.from_array(pixels, 0.0, high, "test"), ImageConfig())
    return [f.split(" ")[0] for f in qc_flags(stats, QCConfig())]


def test_good_image_has_no_flags():
    assert flags_of(xray(400, 320)) == []


def test_each_flag():
    good = xray(400, 320).astype(np.float64)
    assert flags_of(np.full((400, 320), 20000, np.uint16)) == ["near_constant", "low_contrast"]
    assert flags_of(xray(100, 80)) == ["too_small"]
    low = (20000 + good / 65535 * 3000).astype(np.uint16)  # contrast ~0.025, std ~0.008 of the range
    assert flags_of(low) == ["low_contrast"]
    burnt = xray(400, 320)
    burnt[:200] = 65535
    assert "saturated" in flags_of(burnt)
    bordered = np.zeros((800, 640), np.uint16)
    bordered[300:500, 250:400] = xray(200, 150)
    assert "mostly_border" in flags_of(bordered)


def test_contact_sheet(tmp_path):
    tiles = [(xray(bits=8, seed=i), f"tile {i}") for i in range(10)]
    path = contact_sheet(tiles, tmp_path / "sheet.png", thumb=64, columns=4)
    from PIL import Image

    assert Image.open(path).size == (256, 3 * (64 + 14))
