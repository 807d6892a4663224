"""What one stage hands the next, typed in one place: the prepared layout's metadata rows and the four manifests
(prepare.json, run.json, generate.json, metrics.json), each read and written only through its class here, with a
schema version.

docs/data-format.md describes these files for users; it is written from this module.

A manifest names its kind and version under "schema". Files written before versions existed are version 1 and
read as such; a file from a newer cxrgen is refused with a message saying so, rather than misread.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self, TypedDict

from .fileio import read_jsonl_lines, write_json, write_jsonl
from .provenance import provenance

METADATA_FILE = "metadata.jsonl"  # one per split folder: the layout of datasets' image folders (`imagefolder`)


class ContractError(ValueError):
    """A file one stage hands another is missing, malformed, or from another schema version."""


# -- the prepared layout ---------------------------------------------------------------------------------------


class MetadataRow(TypedDict, total=False):
    """One image of a prepared or generated set: a line of `<folder>/<split>/metadata.jsonl`."""

    file_name: str  # the image, relative to the split folder (`imagefolder`'s key)
    text: str  # the prompt
    id: str
    source: str  # the release format it came from (padchest, mimic, chexpert, folder)
    patient_key: str | None  # salted: never the release's patient id
    age: int | None
    sex: str | None
    view: str | None
    projection: str | None
    modality: str | None
    findings: list[dict[str, Any]]  # [{"label": ..., "locations": [...]}]
    labeler: str | None  # who labelled the image, where the release says (e.g. physician, negbio)
    tokens: int
    caption: str  # folder sources' own captions
    prompt_dropped: list[str]  # what prompt fitting left out
    qc_flags: list[str]
    # generated sets only
    index: int
    seed: int
    synthetic: bool
    origin: str
    model: str
    adapters: list[dict[str, Any]]
    sampler: dict[str, Any]
    dicom_file: str


def metadata_path(folder: str | Path, split: str) -> Path:
    return Path(folder) / split / METADATA_FILE


def read_metadata(folder: str | Path, split: str | None = None) -> list[MetadataRow]:
    """The rows of a split (`folder/split/metadata.jsonl`), or of `folder/metadata.jsonl` when no split is given."""
    path = metadata_path(folder, split) if split is not None else Path(folder) / METADATA_FILE
    if not path.is_file():
        raise ContractError(f"{path} does not exist")
    return list(read_jsonl_lines(path))  # type: ignore[arg-type]


def write_metadata(folder: str | Path, split: str, rows: list[MetadataRow]) -> Path:
    return write_jsonl(metadata_path(folder, split), rows)  # type: ignore[arg-type]


# -- manifests ---------------------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class Manifest:
    """A stage's record of what it made. Subclasses name their file, kind and version."""

    FILE: ClassVar[str]
    KIND: ClassVar[str]
    VERSION: ClassVar[int] = 2  # 1: the files written before schema versions, which lack "schema"

    cxrgen: str = ""  # code version that wrote it
    versions: dict[str, str] = field(default_factory=dict)  # library versions
    created: str = ""

    def __post_init__(self) -> None:
        if not self.cxrgen:
            self.__dict__.update(provenance())

    @classmethod
    def path(cls, folder: str | Path) -> Path:
        folder = Path(folder)
        return folder if folder.name == cls.FILE else folder / cls.FILE

    def to_json(self) -> dict[str, Any]:
        return {"schema": {"kind": self.KIND, "version": self.VERSION}, **dataclasses.asdict(self)}

    def write(self, folder: str | Path) -> Path:
        return write_json(self.path(folder), self.to_json())

    @classmethod
    def read(cls, folder: str | Path) -> Self:
        """The manifest in `folder` (or the file itself). Version 1 files are upgraded; newer ones refused."""
        path = cls.path(folder)
        if not path.is_file():
            raise ContractError(f"{path} does not exist")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ContractError(f"{path} is not valid JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise ContractError(f"{path} is not a {cls.KIND} manifest")
        return cls.from_json(data, path)

    @classmethod
    def from_json(cls, data: dict[str, Any], where: Path | str = "") -> Self:
        schema = data.pop("schema", {"kind": cls.KIND, "version": 1})
        kind, version = schema.get("kind"), schema.get("version")
        if kind != cls.KIND:
            raise ContractError(f"{where} is a {kind} manifest, not a {cls.KIND} manifest ({cls.FILE})")
        if not isinstance(version, int) or version > cls.VERSION:
            raise ContractError(
                f"{where} was written by a newer cxrgen ({data.get('cxrgen', 'unknown version')}: {kind} schema "
                f"version {version}; this cxrgen reads up to {cls.VERSION}): upgrade cxrgen to read it"
            )
        if version < cls.VERSION:
            data = cls.upgrade(data, version, where)
        names = {f.name for f in dataclasses.fields(cls)}
        missing = [f.name for f in dataclasses.fields(cls) if _required(f) and f.name not in data]
        if missing:
            raise ContractError(f"{where} lacks {', '.join(missing)}: is it a complete {cls.FILE}?")
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def upgrade(cls, data: dict[str, Any], version: int, where: Path | str) -> dict[str, Any]:
        """A version-`version` file's content in this version's fields (by default: the fields did not change)."""
        return data


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING  # type: ignore[misc]


@dataclass(kw_only=True)
class PrepareManifest(Manifest):
    """prepare.json: what `cxrgen prepare` read, kept, rejected and wrote, with the dataset's vocabulary."""

    FILE: ClassVar[str] = "prepare.json"
    KIND: ClassVar[str] = "prepare"

    config: dict[str, Any]  # the PrepareConfig, the patient-key salt redacted
    inputs: dict[str, Any] = field(default_factory=dict)  # input tables by option: file name and sha256
    data_hash: dict[str, str] = field(default_factory=dict)  # split -> sha256 of its metadata.jsonl
    rows_read: int = 0
    records_parsed: int = 0
    kept: int = 0
    rejected: int = 0
    rejected_by_category: dict[str, int] = field(default_factory=dict)
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    reader: dict[str, int] = field(default_factory=dict)  # the reader's counts (rows, layouts, ...)
    splits: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> images, patients
    labels: dict[str, int] = field(default_factory=dict)  # the 40 commonest labels
    label_audit: dict[str, Any] = field(default_factory=dict)
    vocabulary: dict[str, Any] = field(default_factory=dict)  # Vocabulary.to_json()
    unknown_projection_kept: dict[str, Any] = field(default_factory=dict)
    source_index: dict[str, str] = field(default_factory=dict)
    tokens: dict[str, Any] = field(default_factory=dict)  # tokenizer, prompt settings, token statistics
    contact_sheets: list[str] = field(default_factory=list)
    metadata_only: bool = False
    timing: dict[str, float] = field(default_factory=dict)

    @property
    def prompt_settings(self) -> dict[str, Any] | None:
        """The PromptConfig the prompts were built with (what training and generation must ask in)."""
        return self.tokens.get("prompt")


@dataclass(kw_only=True)
class RunManifest(Manifest):
    """run.json: what `cxrgen train` trained on and from, and what it wrote."""

    FILE: ClassVar[str] = "run.json"
    KIND: ClassVar[str] = "run"

    config: dict[str, Any]  # the TrainConfig
    method: str  # the training method's registered name
    model: dict[str, Any]  # the ModelConfig the base was loaded with
    base_model: dict[str, Any]  # source, identity, prediction_type
    stack: list[dict[str, Any]]  # LoRAs trained on top of: path, weight, identity
    data: dict[str, Any]  # folder, split, metadata_sha256, images
    prompts: dict[str, Any] | None  # the prepared dataset's prompt settings
    long_prompts: bool
    resolution: int  # the image side, in pixels
    processes: int = 1
    outputs: dict[str, str] = field(default_factory=dict)  # name -> path (lora files, or the pipeline folder)
    # how to sample from what was trained: "base" (a folder inside the run, or null for the training base) and
    # "adapters", [path, weight] pairs applied on it in order (paths inside the run are relative to it)
    sample_with: dict[str, Any] = field(default_factory=lambda: {"base": None, "adapters": []})
    figures: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def upgrade(cls, data: dict[str, Any], version: int, where: Path | str) -> dict[str, Any]:
        config = data.get("config", {})
        lora = config.get("lora", {})
        weights = lora.get("stack_weights") or [1.0] * len(data.get("stack", []))
        stack = [{**s, "weight": w} for s, w in zip(data.get("stack", []), weights, strict=False)]
        method = config.get("method", "lora")
        if method == "full":
            sample_with = {"base": "pipeline", "adapters": []}
        else:
            sample_with = {"base": None, "adapters": [*([s["path"], s["weight"]] for s in stack), ["lora", 1.0]]}
        return {**data, "method": method, "model": config.get("model", {}), "stack": stack, "sample_with": sample_with}


@dataclass(kw_only=True)
class GenerateManifest(Manifest):
    """generate.json: how a synthetic set was made. Each image's own seed and prompt are in its metadata row."""

    FILE: ClassVar[str] = "generate.json"
    KIND: ClassVar[str] = "generate"

    config: dict[str, Any]  # the GenerateConfig
    model: str  # the base model's identity
    adapters: list[dict[str, Any]]  # path, weight, sha256
    sampler: dict[str, Any]
    images: int
    prompt_settings: dict[str, Any]
    synthetic: bool = True


@dataclass(kw_only=True)
class MetricsDocument(Manifest):
    """metrics.json: one section per evaluation metric (by its registered name), and what was compared."""

    FILE: ClassVar[str] = "metrics.json"
    KIND: ClassVar[str] = "metrics"

    config: dict[str, Any]  # the EvaluateConfig
    sets: dict[str, dict[str, Any]]  # real / generated / train: folder, images, sizes
    extractors: list[dict[str, Any]] = field(default_factory=list)
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)  # metric name -> its results
    run: str | None = None  # the training run, for its curves
    seconds: float = 0.0

    # the metrics of version 1 files, which kept each section at the top level
    V1_SECTIONS: ClassVar[tuple[str, ...]] = ("fidelity", "diversity", "memorization", "adherence", "forgetting")

    @classmethod
    def upgrade(cls, data: dict[str, Any], version: int, where: Path | str) -> dict[str, Any]:
        sections = {name: data.pop(name) for name in cls.V1_SECTIONS if name in data}
        return {**data, "sections": sections}
