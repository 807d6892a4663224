"""Compose: the models one can sample from, the words their training data uses, and a request turned into the
very `GenerateConfig` that `cxrgen generate` builds from flags, so the app and the command make the same pixels.

A browser names models and LoRAs by folder ids, never by paths: only runs under --runs and models under --models
are loaded.
"""

from __future__ import annotations

import math
import os
import threading
import typing
from pathlib import Path
from typing import Any

from ..config import ConfigError
from ..contracts import ContractError, RunManifest
from ..generate import conditions as cond
from ..generate.config import GenerateConfig
from ..generate.runner import plan_items, plan_prompts, resolve_source
from ..model.loading import ModelConfig
from ..model.sampling import Sampler
from ..model.source import ModelSource
from ..tokens import CLIP_WINDOW, TokenCounter, TokenizerError, clip_tokenizer, load_tokenizer
from ..vocabulary import Vocabulary, load_vocabulary
from .folders import FolderIndex, folder_id, shown_name

SAMPLERS = list(typing.get_args(Sampler))
LIMITS = {"n": 64, "steps": 200}  # per request: a page is not the place for a 5000-image set


class RequestError(ValueError):
    """A request the app refuses, with the reason shown on the page (HTTP 400)."""


def models(index: FolderIndex, extra_bases: list[str]) -> dict[str, Any]:
    """Finished runs to sample from; base models (--models and the runs' own) with LoRA runs to stack on them."""
    runs, bases, loras = [], {}, []
    for folder in index.all("runs"):
        if not RunManifest.path(folder.path).is_file():
            continue
        try:
            source = ModelSource.from_run(folder.path)
            manifest = RunManifest.read(folder.path)
        except (ConfigError, ContractError, OSError):
            continue
        runs.append({"id": folder.id, "name": folder.name, "method": manifest.method})
        if manifest.method == "lora":
            loras.append({"id": folder.id, "name": folder.name})
        extra_bases = [(source.trained_from or source.base).base, *extra_bases]
    for base in extra_bases:
        local = Path(base).expanduser()
        path = os.path.normpath(local.resolve()) if local.exists() else base  # else a hub id
        shown = shown_name(path) if local.exists() else base
        bases.setdefault(path, {"id": "b" + folder_id(Path(path)), "name": shown, "path": path})
    return {
        "runs": runs,
        "bases": [{"id": b["id"], "name": b["name"]} for b in bases.values()],
        "loras": loras,
        "samplers": SAMPLERS,
        "paths": {b["id"]: b["path"] for b in bases.values()},
    }


def build_config(index: FolderIndex, extra_bases: list[str], body: dict[str, Any], out: Path) -> GenerateConfig:
    """The generate settings of a request: {model: {run: ID} | {base: ID, loras: [{run: ID, weight: W}]},
    age, sex, view, projection, modality, findings: [{label, locations}], n, seed, steps, guidance, sampler}."""
    model = body.get("model") or {}
    if not isinstance(model, dict):
        raise RequestError("model: give {run: ID} or {base: ID, loras: [...]}")
    run = loras = None
    base = ""
    if model.get("run"):
        folder = index.get("runs", str(model["run"]))
        if folder is None or not RunManifest.path(folder.path).is_file():
            raise RequestError("choose a finished run")
        run = str(folder.path)
    else:
        known = models(index, extra_bases)["paths"]
        if str(model.get("base")) not in known:
            raise RequestError("choose a run, or a base model")
        base = known[str(model["base"])]
        loras = []
        for entry in _list(model.get("loras"), "loras"):
            folder = index.get("runs", str(entry.get("run")))
            if folder is None or not RunManifest.path(folder.path).is_file():
                raise RequestError("a LoRA is not a finished run under --runs")
            weight = _number(entry.get("weight", 1.0), "LoRA weight", float, -4.0, 4.0)
            loras.append(f"{folder.path}:{weight}")
    findings = []
    for f in _list(body.get("findings"), "findings"):
        label = str(f.get("label") or "").strip()
        if not label:
            continue
        places = f.get("locations") or []
        places = places.split(",") if isinstance(places, str) else places
        if not isinstance(places, list):
            raise RequestError("locations: give a list of names")
        places = [str(x).strip() for x in places if str(x).strip()]
        findings.append(label + ("@" + ",".join(places) if places else ""))
    n = _number(body.get("n", 1), "number of images", int, 1, LIMITS["n"])
    steps = _number(body.get("steps", 25), "steps", int, 1, LIMITS["steps"])
    sampler = body.get("sampler") or None
    if sampler is not None and sampler not in SAMPLERS:
        raise RequestError(f"sampler: choose one of {', '.join(SAMPLERS)}")
    try:
        return GenerateConfig(
            out=str(out),
            run=run,
            model=ModelConfig(base=base),
            loras=loras or [],
            n=n,
            age=_number(body["age"], "age", int, 0, 120) if body.get("age") not in (None, "") else None,
            sex=_text(body, "sex"),
            view=_text(body, "view"),
            projection=_text(body, "projection"),
            modality=_text(body, "modality"),
            finding=findings,
            sampler=sampler,
            steps=steps,
            guidance=_number(body.get("guidance", 7.5), "guidance", float, 0.0, 50.0),
            seed=_number(body.get("seed", 0), "seed", int, 0, cond.SEED_RANGE - 1),
            negative_prompt=_text(body, "negative_prompt") or "",
        )
    except (ConfigError, cond.ConditionsError) as exc:
        raise RequestError(str(exc)) from exc


def _number(value: Any, name: str, kind: type, low: float, high: float) -> Any:
    """A number from low to high (whole for int): strings of digits are read, NaN and 1e309 are not numbers."""
    try:
        number = kind(value) if not isinstance(value, bool | dict | list) else None
    except (TypeError, ValueError, OverflowError):
        number = None
    if number is None or (kind is float and not math.isfinite(number)):
        raise RequestError(f"{name}: {value!r} is not a number")
    if kind is int and isinstance(value, float) and not value.is_integer():
        raise RequestError(f"{name}: {value!r} is not a whole number")
    if not low <= number <= high:
        more = " (use cxrgen generate for more)" if name in ("number of images", "steps") else ""
        raise RequestError(f"{name} must be from {low:g} to {high:g} here{more}")
    return number


def _text(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value in (None, ""):
        return None
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise RequestError(f"{key}: give text")
    return str(value)[:1000]


def _list(value: Any, name: str) -> list[dict[str, Any]]:
    if value in (None, ""):
        return []
    if not isinstance(value, list) or not all(isinstance(x, dict) for x in value):
        raise RequestError(f"{name}: give a list of objects")
    return value


class Vocabularies:
    """The training data's vocabulary and a tokenizer per model, kept: every keystroke asks for a preview."""

    def __init__(self) -> None:
        self._vocab: dict[str, Vocabulary] = {}
        self._tokenizers: dict[str, Any] = {}
        self._lock = threading.Lock()

    def vocabulary(self, source: ModelSource, config: GenerateConfig) -> Vocabulary:
        data = source.data if source.data is not None and source.data.is_dir() else None
        if data is None and config.loras:  # base + LoRAs: the words the (first) LoRA's run was trained with
            first = Path(config.loras[0].rpartition(":")[0])
            data = ModelSource.from_run(first).data if RunManifest.path(first).is_file() else None
        key = str(data)
        with self._lock:
            if key not in self._vocab:
                self._vocab[key] = load_vocabulary(data) if data is not None and data.is_dir() else Vocabulary()
            return self._vocab[key]

    def tokenizer(self, source: ModelSource) -> Any:
        base = source.base.base
        with self._lock:
            if base not in self._tokenizers:
                try:
                    self._tokenizers[base] = load_tokenizer(base) if Path(base).is_dir() else clip_tokenizer()
                except TokenizerError:  # SD 3.5 and hub ids without a local copy: count as CLIP does
                    self._tokenizers[base] = clip_tokenizer()
            return self._tokenizers[base]

    def words(self, source: ModelSource, config: GenerateConfig) -> dict[str, Any]:
        vocab = self.vocabulary(source, config)

        def listed(table: dict[str, Any]) -> list[list[Any]]:
            return sorted(([name, term.total] for name, term in table.items()), key=lambda nt: (-nt[1], nt[0]))

        return {"labels": listed(vocab.labels), "locations": listed(vocab.locations)}


def preview(config: GenerateConfig, words: Vocabularies) -> dict[str, Any]:
    """The prompt the model will get for these conditions, its token count and the names read as others; a name
    the training data never uses is refused (RequestError) with the closest known."""
    source = resolve_source(config)
    try:
        items = plan_items(config)[:1]  # every image of a request has the same conditions
    except cond.ConditionsError as exc:  # an age out of range, a sex that is not M, F or O
        raise RequestError(str(exc)) from exc
    vocabulary = words.vocabulary(source, config)
    tokenizer = words.tokenizer(source)
    try:
        notes = cond.check_names(items, vocabulary) if vocabulary.labels else []
        # the vocabulary ranks findings too: given only where the generation reads the same one (a run's data)
        trained_on = vocabulary if source.data is not None and source.data.is_dir() else None
        prompt = plan_prompts(items, source, None, tokenizer, vocabulary=trained_on)[0]
    except (cond.ConditionsError, ConfigError) as exc:
        raise RequestError(str(exc)) from exc
    conditions = items[0].conditions
    assert conditions is not None  # made from condition flags
    read_as = [f.label + ("@" + ",".join(f.locations) if f.locations else "") for f in conditions.findings]
    return {
        "prompt": prompt,
        "findings": read_as,  # in the training data's names: what the generation is given
        "tokens": TokenCounter(tokenizer).count(prompt),
        "limit": CLIP_WINDOW,
        "long_prompts": source.long_prompts,
        "notes": notes,
        "checked": bool(vocabulary.labels),
    }
