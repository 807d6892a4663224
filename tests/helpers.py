"""Fixture builders: a PadChest release with every quirk of the real file, bad image files, DICOMs."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cxrgen.phantom import padchest_row, render, write_padchest_csv

# Each quirk row: CSV fields, and what the reader must make of it.
QUIRK_ROWS: list[tuple[str, dict, dict]] = [
    (
        "nested layout",
        dict(
            ImageID="nested_a1.png",
            PatientID="p1",
            PatientBirth="1950.0",
            StudyDate_DICOM="20150602",
            Labels="['cardiomegaly', 'unchanged']",
            LabelsLocalizationsBySentence="[['normal'], ['cardiomegaly', 'loc cardiac'], ['unchanged']]",
        ),
        dict(
            age=65,
            sex="M",
            view="PA",
            projection="PA",
            # a sentence about a normal structure says 'normal': the image-level labels do not
            findings=[("cardiomegaly", ("cardiac",)), ("unchanged", ())],
            label_notes=("sentences differ", "sentence only: normal"),
        ),
    ),
    (
        "flat layout, labels sharing a location run, leading spaces",
        dict(
            ImageID="flat_b2.png",
            PatientID="p2",
            ImageDir="7",
            Labels="['pleural effusion', ' unchanged', 'COPD signs', ' heart insufficiency']",
            LabelsLocalizationsBySentence=(
                "['pleural effusion', 'loc right', 'loc pleural', 'unchanged', "
                "'COPD signs', ' heart insufficiency', 'loc cardiac']"
            ),
        ),
        dict(
            findings=[
                ("pleural effusion", ("right", "pleural")),
                ("unchanged", ()),
                ("COPD signs", ("cardiac",)),
                ("heart insufficiency", ("cardiac",)),
            ]
        ),
    ),
    (
        "several labels before the sentence's locations",
        dict(
            ImageID="multi_c3.png",
            PatientID="p3",
            Labels="['alveolar pattern', 'pleural effusion']",
            LabelsLocalizationsBySentence="[['alveolar pattern', 'pleural effusion', 'loc pleural', 'loc right']]",
        ),
        dict(findings=[("alveolar pattern", ("pleural", "right")), ("pleural effusion", ("pleural", "right"))]),
    ),
    (
        "bare nan item",
        dict(
            ImageID="nan_d4.png",
            PatientID="p4",
            Labels="['unchanged', 'COPD signs']",
            LabelsLocalizationsBySentence="[nan, ['unchanged'], ['COPD signs', ' loc basal']]",
        ),
        dict(findings=[("unchanged", ()), ("COPD signs", ("basal",))]),
    ),
    (
        "repeated labels",
        dict(
            ImageID="repeat_e5.png",
            PatientID="p5",
            Labels="['COPD signs', ' COPD signs']",
            LabelsLocalizationsBySentence="[['COPD signs'], ['COPD signs', 'loc right'], [' COPD signs']]",
        ),
        dict(findings=[("COPD signs", ("right",))], label_notes=("repeat",)),  # stated once
    ),
    (
        "blank birth year, sex and view",
        dict(
            ImageID="blank_f6.png",
            PatientID="p6",
            PatientBirth="",
            PatientSex_DICOM="",
            ViewPosition_DICOM="",
        ),
        dict(age=None, sex=None, view=None, projection="PA", findings=[("normal", ())]),
    ),
    (
        "sex O, AP_horizontal, DX",
        dict(
            ImageID="supine_g7.png",
            PatientID="p7",
            PatientSex_DICOM="O",
            Projection="AP_horizontal",
            ViewPosition_DICOM="ANTEROPOSTERIOR",
            Modality_DICOM="DX",
            MethodLabel="RNN_model",
            Labels="['pacemaker', 'suboptimal study', 'exclude']",
            LabelsLocalizationsBySentence="[['pacemaker'], ['suboptimal study'], ['exclude']]",
        ),
        dict(
            sex="O",
            view="AP",
            projection="AP_horizontal",
            modality="DX",
            labeler="rnn",
            findings=[("pacemaker", ()), ("suboptimal study", ()), ("exclude", ())],
        ),
    ),
    (
        "by-sentence blank, Labels filled",
        dict(
            ImageID="labels_h8.png",
            PatientID="p8",
            LabelsLocalizationsBySentence="",
            Labels="['pacemaker', ' chronic changes']",
        ),
        dict(findings=[("pacemaker", ()), ("chronic changes", ())]),
    ),
    (
        "by-sentence holds only nan, Labels filled",
        dict(
            ImageID="nanonly_q17.png",
            PatientID="p15",
            LabelsLocalizationsBySentence="[nan]",
            Labels="['pacemaker']",
        ),
        dict(findings=[("pacemaker", ())]),
    ),
    (
        "empty label list",
        dict(ImageID="empty_i9.png", PatientID="p9", LabelsLocalizationsBySentence="[]", Labels="[]"),
        dict(findings=[]),
    ),
    (
        "sentence-level normal beside findings, a label repeated across sentences",
        dict(
            ImageID="device_r18.png",
            PatientID="p16",
            Labels="['pacemaker', 'dual chamber device']",
            LabelsLocalizationsBySentence=(
                "[['pacemaker'], ['normal'], ['dual chamber device'], ['pacemaker'], ['normal']]"
            ),
        ),
        dict(
            findings=[("pacemaker", ()), ("dual chamber device", ())],
            label_notes=("repeat", "sentences differ", "sentence only: normal"),
        ),
    ),
    (
        "side variants in the sentence column",
        dict(
            ImageID="sides_s19.png",
            PatientID="p17",
            Labels="['pleural effusion', 'hypoexpansion']",
            LabelsLocalizationsBySentence=(
                "['pleural effusion right side', 'loc costophrenic angle', 'hypoexpansion both side']"
            ),
        ),
        dict(
            findings=[
                ("pleural effusion", ("right", "costophrenic angle")),
                ("hypoexpansion", ("bilateral",)),
            ],
            label_notes=(
                "side variant: pleural effusion right side",
                "side variant: hypoexpansion both side",
            ),
        ),
    ),
    (
        "Labels [''], normal only in the sentence column",
        dict(
            ImageID="blanklab_t20.png",
            PatientID="p18",
            Labels="['']",
            LabelsLocalizationsBySentence="[['normal']]",
        ),
        dict(findings=[("normal", ())], label_notes=("from sentences",)),
    ),
    (
        "Labels [''], only locations in the sentence column",
        dict(
            ImageID="onlyloc_u21.png",
            PatientID="p19",
            Labels="['']",
            LabelsLocalizationsBySentence="[['loc right']]",
        ),
        dict(findings=[]),
    ),
    (
        "Labels cell nan, labels in the sentence column",
        dict(
            ImageID="nanlab_v22.png",
            PatientID="p22",
            Labels="nan",
            LabelsLocalizationsBySentence="[['exclude']]",
        ),
        dict(findings=[("exclude", ())], label_notes=("from sentences",)),
    ),
    (
        "Labels [''], a normal sentence beside a finding in the sentence column",
        dict(
            ImageID="blankfind_w23.png",
            PatientID="p24",
            Labels="['']",
            LabelsLocalizationsBySentence="[['normal'], ['cardiomegaly', 'loc cardiac']]",
        ),
        dict(findings=[("cardiomegaly", ("cardiac",))], label_notes=("from sentences", "sentence only: normal")),
    ),
    (
        "malformed sentence cell beside a good Labels cell (it only gives locations)",
        dict(
            ImageID="badsent_z24.png",
            PatientID="p25",
            Labels="['pacemaker']",
            LabelsLocalizationsBySentence="[['pacemaker', 'loc right'",
        ),
        dict(findings=[("pacemaker", ())], label_notes=("sentence cell malformed",)),
    ),
    (
        "lateral (filtered by default)",
        dict(ImageID="lateral_j10.png", PatientID="p1", Projection="L", ViewPosition_DICOM="LATERAL"),
        dict(projection="L", view="LATERAL"),
    ),
    (
        "short view code PA, 10 bits stored, a window given as a list",
        dict(
            ImageID="short_l12.png",
            PatientID="p10",
            ViewPosition_DICOM="PA",
            BitsStored_DICOM="10",
            WindowCenter_DICOM="['512', '512']",
            WindowWidth_DICOM="1024.0",
        ),
        dict(view="PA", projection="PA"),
    ),
    (
        "right lateral code (filtered by default)",
        dict(ImageID="rl_m13.png", PatientID="p11", Projection="L", ViewPosition_DICOM="RL"),
        dict(projection="L", view="RL"),
    ),
    (
        "oblique view, costal projection (filtered by default)",
        dict(ImageID="costal_n14.png", PatientID="p12", Projection="COSTAL", ViewPosition_DICOM="OBLICUA"),
        dict(projection="COSTAL", view="OBLICUA"),
    ),
    (
        "decubitus view, projection EXCLUDE (filtered by default)",
        dict(ImageID="exclude_o15.png", PatientID="p13", Projection="EXCLUDE", ViewPosition_DICOM="LLD"),
        dict(projection="EXCLUDE", view="LLD"),
    ),
    (
        "generic view, projection UNK (filtered by default)",
        dict(ImageID="unk_p16.png", PatientID="p14", Projection="UNK", ViewPosition_DICOM="GENERICA"),
        dict(projection="UNK", view="GENERICA"),
    ),
    (
        "second image of patient 2",
        dict(ImageID="flat2_k11.png", PatientID="p2", ImageDir="7", StudyDate_DICOM="20160101"),
        dict(age=66),
    ),
]
REJECTED_ROWS: list[tuple[str, dict, str]] = [
    (
        "no labels at all",
        dict(ImageID="nolabel_x1.png", PatientID="p20", LabelsLocalizationsBySentence="", Labels=""),
        "labels: missing",
    ),
    (
        "nan label cells",
        dict(ImageID="nancells_x3.png", PatientID="p23", LabelsLocalizationsBySentence="nan", Labels="nan"),
        "labels: missing",
    ),
    (
        "malformed list text in both label cells",
        dict(
            ImageID="bad_x2.png",
            PatientID="p21",
            Labels="['pleural effusion'",
            LabelsLocalizationsBySentence="[['pleural effusion', 'loc right'",
        ),
        "labels: malformed",
    ),
]
# Rows whose image file is bad, and the reason prefix prepare must give.
BAD_IMAGE_ROWS = {
    "truncated_y1.png": "image: truncated",
    "zero_y2.png": "image: empty file",
    "notimage_y3.png": "image: not a readable image",
    "rgba_y4.png": "image: colour RGBA image",  # grey ones in these containers are converted
    "palette_y5.png": "image: colour P image",
    "float32_y6.png": "image: unsupported mode F",
    "bomb_y7.png": "image: too many pixels",
    "missing_y8.png": "image: file not found",
    "../../escape_y9.png": "path: escapes",
    "flat_y10.png": "qc: near_constant",
}


def xray(height: int = 160, width: int = 128, seed: int = 0, bits: int = 16, findings=()) -> np.ndarray:
    return render(height, width, list(findings), seed=seed, bits=bits)


def save_png(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def png_bomb(path: Path, width: int = 30000, height: int = 30000) -> Path:
    """A tiny PNG whose header claims a huge image."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )
    return path


def write_bad_images(root: Path) -> None:
    folder = root / "0"
    folder.mkdir(parents=True, exist_ok=True)
    good = save_png(folder / "tmp_good.png", xray(seed=99))
    data = good.read_bytes()
    (folder / "truncated_y1.png").write_bytes(data[: len(data) // 2])
    (folder / "zero_y2.png").write_bytes(b"")
    (folder / "notimage_y3.png").write_text("this is not an image")
    yy, xx = np.mgrid[0:64, 0:64]
    colour = np.stack([xx * 4, yy * 4, 255 - xx * 2, np.full_like(xx, 255)], axis=2).astype(np.uint8)
    Image.fromarray(colour, "RGBA").save(folder / "rgba_y4.png")
    Image.fromarray(colour[..., :3], "RGB").quantize(32).save(folder / "palette_y5.png")
    Image.fromarray(np.ones((64, 64), np.float32)).save(folder / "float32_y6.png", format="TIFF")
    png_bomb(folder / "bomb_y7.png")
    save_png(folder / "flat_y10.png", np.full((200, 160), 30000, np.uint16))
    good.unlink()


def write_quirk_release(root: Path, gz: bool = True, size: int = 160) -> Path:
    """The quirk rows, the rejected rows and the bad-image rows as a PadChest release under `root`."""
    rows = []
    for i, (_, fields, _) in enumerate(QUIRK_ROWS):
        rows.append(padchest_row(**fields))
        folder = fields.get("ImageDir", "0")
        save_png(root / folder / fields["ImageID"], xray(size, int(size * 0.8), seed=i))
    for _, fields, _ in REJECTED_ROWS:
        rows.append(padchest_row(**fields))
    write_bad_images(root)
    for j, name in enumerate(BAD_IMAGE_ROWS):
        rows.append(padchest_row(ImageID=name, PatientID=f"p{30 + j}"))
    return write_padchest_csv(root / ("labels.csv.gz" if gz else "labels.csv"), rows)


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    monochrome1: bool = False,
    slope: float = 1.0,
    intercept: float = 0.0,
    window: tuple[float, float] | None = None,
    bits: int = 12,
    **tags,
) -> Path:
    """A minimal uncompressed DICOM (Digital X-Ray) file."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = tags.pop("Modality", "DX")
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    if slope != 1.0 or intercept != 0.0:
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


# Grey pictures in colour containers, and colour ones (folder sources meet both)
GREY_PALETTE = [v for i in range(256) for v in (i, i, i)]


def save_grey_rgb_jpeg(path: Path, pixels: np.ndarray, seed: int = 0) -> Path:
    """A grey X-ray as an RGB JPEG the way real ones arrive: channels with independent noise (a scan, a
    screenshot, an export through a colour pipeline), 4:2:0 chroma subsampling, and a small red arrow burnt in."""
    rng = np.random.default_rng(seed)
    rgb = pixels[..., None].astype(float) + rng.normal(0, 3, pixels.shape + (3,))
    h, w = pixels.shape
    rgb[h // 3 : h // 3 + 6, w // 4 : w // 4 + 6] = (230, 30, 30)  # under 0.1% of the pixels
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(path, quality=90, subsampling=2)
    return path


def colour_photo(h: int = 240, w: int = 200) -> np.ndarray:
    """A colour picture: hues across the image, the X-ray's structure in blue."""
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx * 255 // w, yy * 255 // h, xray(h, w, seed=0, bits=8)], axis=2).astype(np.uint8)


def prepare_phantoms(root: Path, n: int, seed: int, resolution: int) -> Path:
    """A phantom PadChest release under `root`, prepared at `resolution` px with train/val/test splits."""
    from cxrgen.imaging import ImageConfig
    from cxrgen.phantom import write_release
    from cxrgen.prepare.command import PrepareConfig, run
    from cxrgen.prepare.qc import QCConfig
    from cxrgen.prepare.splits import SplitConfig

    write_release(root / "release", n=n, seed=seed, size=256)
    out = root / f"prepared-{resolution}"
    run(
        PrepareConfig(
            source="padchest",
            csv=str(root / "release" / "phantom_padchest.csv.gz"),
            images=str(root / "release"),
            out=str(out),
            workers=1,
            image=ImageConfig(resolution=resolution),
            qc=QCConfig(min_side=64, contact_sheet=0),
            splits=SplitConfig(train=0.6, val=0.2, test=0.2),
        )
    )
    return out


@contextmanager
def training_stops_after(step: int) -> Iterator[None]:
    """Training is interrupted (as by Ctrl-C) once `step`'s periodic work (validation, samples, checkpoint) is done."""
    from cxrgen.train import trainer

    real = trainer.Trainer._periodic

    def periodic(self: trainer.Trainer) -> None:
        real(self)
        if self.step == step:
            raise KeyboardInterrupt

    trainer.Trainer._periodic = periodic
    try:
        yield
    finally:
        trainer.Trainer._periodic = real


@contextmanager
def serving_app(*args: str) -> Iterator[Any]:
    """`cxrgen app` with these flags on a free local port, serving on a thread; yields the `App` (`.url`)."""
    import threading

    from cxrgen.app.command import AppConfig, start
    from cxrgen.cli import build_parser
    from cxrgen.config import load, namespace_to_overrides

    parsed = build_parser("app").parse_args(["app", "--port", "0", *args])
    config = load(AppConfig, None, namespace_to_overrides(parsed))
    app, server = start(config)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        app.ready.wait(120)  # torch and diffusers imported: what a generation request waits for anyway
        yield app
    finally:
        server.shutdown()
        server.server_close()
        app.close()
