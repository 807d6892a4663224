"""Prompts from conditions: the one place that decides the words a model is trained and asked with.

A prompt is a template of comma-separated parts. `{field}` inserts a value; a `[...]` segment is left out when a
field in it is missing; a part with a missing field outside brackets is left out whole. `{findings}` must be a
part of its own and expands to `diagnosis <label>, loc <location>, ...` in report order.

A prompt states each label once (a repeated label's locations join its first mention). Pseudo-labels, which
describe the study rather than the image, follow `pseudo_labels`; view codes that name no view (PadChest's
GENERICA) are left out. Fitting to the text encoder's window drops, one at a time and only as far as needed:
pseudo-labels, locations, then findings by priority; a prompt still too long loses trailing parts, free text (a
caption) being cut between words. Every drop is recorded.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, get_args

from .config import ConfigError, option
from .records import SEX_WORDS, Conditions, Finding, is_known_view, is_pseudo_label, merge_repeats, name_key
from .tokens import CLIP_WINDOW, TokenCounter, load_tokenizer

LEVELS = {
    "simple": "chest x-ray",
    "demographic": "chest x-ray, [age {age}] [{sex}]",
    "full": "chest x-ray, [age {age}] [{sex}], view {view}, projection {projection}, modality {modality}, {findings}",
    "caption": "{caption}",
}
FIELDS = ("age", "sex", "view", "projection", "modality", "findings", "labels", "caption")
# Pseudo-labels say least about the image first: they are dropped in this order.
_PSEUDO_DROP_ORDER = ("exclude", "suboptimal study", "unchanged", "normal")
_FIELD = re.compile(r"\{(\w+)\}")

Level = Literal["simple", "demographic", "full", "caption"]
PseudoLabels = Literal["normal-studies", "keep", "drop"]


@dataclass
class PromptConfig:
    level: Level = option("full", "prompt detail: simple, demographic, full (the original paper's format) or caption")
    template: str | None = option(
        None, "a template overriding level, e.g. 'chest x-ray, [age {age}] [{sex}], {findings}'"
    )
    fit: Literal["fit", "keep"] = option(
        "fit", "fit: shorten prompts to max_tokens; keep: keep whole (for long-prompt encoding in training)"
    )
    max_tokens: int = option(CLIP_WINDOW, "token budget per prompt, start and end tokens included")
    pseudo_labels: PseudoLabels = option(
        "normal-studies",
        "labels that describe the study (normal, unchanged, exclude, suboptimal study) in prompts; metadata keeps "
        "them either way. normal-studies: 'normal' only for a study with no finding, the others left out; keep: "
        "all of them; drop: none",
    )
    keep_findings: Literal["first", "rarest", "commonest"] = option(
        "first", "which findings survive fitting: first mentioned, rarest or commonest labels"
    )
    tokenizer: str | None = option(
        None, "base model (hub id or folder) whose tokenizer counts tokens; default: the exact CLIP tokenizer"
    )

    def __post_init__(self) -> None:
        parse_template(self.template or LEVELS[self.level])
        if self.pseudo_labels not in get_args(PseudoLabels):
            raise ConfigError(
                f"prompts.pseudo_labels must be one of {', '.join(get_args(PseudoLabels))}, not {self.pseudo_labels!r}"
            )
        if self.max_tokens < 8:
            raise ConfigError(f"prompts.max_tokens must be at least 8, not {self.max_tokens}")

    @property
    def template_text(self) -> str:
        return self.template or LEVELS[self.level]


@dataclass
class Prompt:
    text: str
    tokens: int
    tokens_full: int  # before fitting
    dropped: list[str] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)  # pseudo-labels the policy does not state


class Segment(NamedTuple):
    text: str  # a str.format template
    fields: tuple[str, ...]
    optional: bool  # written in [brackets]: left out when a field is missing


Template = list[list[Segment] | None]  # one entry per comma-separated part; None is the {findings} part


def parse_template(template: str) -> Template:
    """Parts of a template. Raises ConfigError naming unknown fields and misplaced {findings}."""
    parts: Template = []
    for raw in _split_top_level(template):
        segments = []
        for m in re.finditer(r"\[([^\]]*)\]|([^\[]+)", raw):
            text = m.group(1) if m.group(1) is not None else m.group(2)
            names = tuple(_FIELD.findall(text))
            for name in names:
                if name not in FIELDS:
                    raise ConfigError(f"prompt template field {{{name}}} is unknown; use {', '.join(FIELDS)}")
            segments.append(Segment(text, names, m.group(1) is not None))
        joined = "".join(seg.text for seg in segments).strip()
        if "{findings}" in joined and joined != "{findings}":
            raise ConfigError("{findings} must be a comma-separated part of its own in a prompt template")
        if joined:
            parts.append(None if joined == "{findings}" else segments)
    if not parts:
        raise ConfigError("the prompt template is empty")
    return parts


def _split_top_level(template: str) -> list[str]:
    unknown = [m.group(0) for m in re.finditer(r"\{[^{}]*\}|[{}]", template) if not _FIELD.fullmatch(m.group(0))]
    if unknown:
        raise ConfigError(f"prompt template {template!r}: {unknown[0]} is not a plain {{field}}")
    out, depth, current = [], 0, []
    for ch in template:
        depth += ch == "["
        depth -= ch == "]"
        if not 0 <= depth <= 1:
            raise ConfigError(f"prompt template {template!r}: [ ] must be balanced and not nested")
        if ch == "," and depth == 0:
            out.append("".join(current))
            current = []
        else:
            current.append(ch)
    if depth != 0:
        raise ConfigError(f"unbalanced [ ] in prompt template {template!r}")
    out.append("".join(current))
    return out


def field_values(conditions: Conditions) -> dict[str, str | None]:
    def text(v: Any) -> str | None:
        return None if v is None or str(v).strip() == "" else str(v)

    return {
        "age": text(conditions.age),
        "sex": SEX_WORDS.get(conditions.sex or ""),
        "view": text(conditions.view) if is_known_view(conditions.view) else None,
        "projection": text(conditions.projection),
        "modality": text(conditions.modality),
        "labels": ", ".join(conditions.labels) or None,
        "caption": text(conditions.caption),
    }


def finding_parts(findings: list[Finding]) -> list[str]:
    parts = []
    for f in findings:
        parts.append("diagnosis " + f.label)
        parts += ["loc " + loc for loc in f.locations]
    return parts


def prompt_findings(findings: list[Finding], pseudo_labels: PseudoLabels) -> list[Finding]:
    """The findings a prompt states: each label once, pseudo-labels as the policy says."""
    findings, _ = merge_repeats(findings)
    if pseudo_labels == "keep":
        return findings
    real = [f for f in findings if not is_pseudo_label(f.label)]
    if pseudo_labels == "drop" or real:
        return real
    return [f for f in findings if name_key(f.label) == "normal"]


def render_parts(template: Template, conditions: Conditions) -> list[str]:
    """The comma-separated parts of a prompt."""
    values = field_values(conditions)
    parts: list[str] = []
    for segments in template:
        if segments is None:
            parts += finding_parts(conditions.findings)
            continue
        rendered = []
        for seg in segments:
            if any(values[n] is None for n in seg.fields):
                if seg.optional:
                    continue
                rendered = []
                break
            rendered.append(seg.text.format_map(values) if seg.fields else seg.text)
        text = " ".join("".join(rendered).split())
        if text:
            parts.append(text)
    return parts


class PromptBuilder:
    """Builds (and fits) prompts with one config; `label_counts` ranks findings for keep_findings."""

    def __init__(self, config: PromptConfig, tokenizer: Any = None, label_counts: Counter | None = None):
        self.config = config
        self.template = parse_template(config.template_text)
        self._tokenizer = tokenizer
        self._counter: TokenCounter | None = None
        self.label_counts = label_counts or Counter()
        self._memo: dict[tuple, Prompt] = {}

    @property
    def counter(self) -> TokenCounter:
        if self._counter is None:
            self._counter = TokenCounter(self._tokenizer or load_tokenizer(self.config.tokenizer))
        return self._counter

    def text(self, conditions: Conditions) -> str:
        """The whole prompt, unfitted."""
        return ", ".join(render_parts(self.template, self._stated(conditions)))

    def _stated(self, conditions: Conditions) -> Conditions:
        """The conditions with the findings a prompt states."""
        findings = prompt_findings(conditions.findings, self.config.pseudo_labels)
        return conditions if findings == conditions.findings else dataclasses.replace(conditions, findings=findings)

    def build(self, conditions: Conditions) -> Prompt:
        """The prompt of `conditions`. Conditions met before give the same (shared, not to be changed) Prompt: a release
        holds thousands of normal studies of one age and sex, a --like plan draws rows again and again."""
        key = (
            conditions.age,
            conditions.sex,
            conditions.view,
            conditions.projection,
            conditions.modality,
            conditions.caption,
            tuple(conditions.findings),
        )
        prompt = self._memo.get(key)
        if prompt is None:
            prompt = self._memo[key] = self._build(conditions)
        return prompt

    def _build(self, conditions: Conditions) -> Prompt:
        stated = self._stated(conditions)
        left_out = []
        if stated is not conditions:
            said = {name_key(f.label) for f in stated.findings}
            left_out = [x for x in dict.fromkeys(f.label for f in conditions.findings) if name_key(x) not in said]
        conditions = stated
        parts = render_parts(self.template, conditions)
        text = ", ".join(parts)
        tokens = self.counter.count_parts(parts)
        prompt = Prompt(text, tokens, tokens, left_out=left_out)
        if self.config.fit == "fit" and tokens > self.config.max_tokens:
            self._fit(conditions, prompt)
        return prompt

    # -- fitting -------------------------------------------------------------------------------------------
    def _fit(self, conditions: Conditions, prompt: Prompt) -> None:
        work = _Shortening(self, conditions)
        budget = self.config.max_tokens
        # only what the template shows is dropped (and recorded): {labels} shows distinct labels, no locations
        if any(part is None for part in self.template):
            steps, estimated = (
                (work.drop_pseudo, work.drop_locations, work.drop_findings),
                True,
            )
        elif any("labels" in seg.fields for part in self.template if part is not None for seg in part):
            steps, estimated = (work.drop_pseudo, work.drop_findings), False  # the estimate counts {findings}
        else:
            steps, estimated = (), False
        for step in steps:
            for note in step():
                prompt.dropped.append(note)
                if (work.estimate <= budget or not estimated) and self._accept(work, conditions, prompt):
                    return
        self._accept(work, conditions, prompt)
        self._truncate(
            prompt, render_parts(self.template, dataclasses.replace(conditions, findings=work.findings())), conditions
        )

    def _accept(self, work: _Shortening, conditions: Conditions, prompt: Prompt) -> bool:
        """Render the shortened findings and count exactly (the running estimate assumes the last part's
        missing comma is one token, which is off by one when that part ends in punctuation)."""
        parts = render_parts(self.template, dataclasses.replace(conditions, findings=work.findings()))
        prompt.text = ", ".join(parts)
        prompt.tokens = self.counter.count_parts(parts)
        return prompt.tokens <= self.config.max_tokens

    def priority_order(self, labels: list[str]) -> list[int]:
        """Indices of findings, lowest priority first."""
        idx = list(range(len(labels)))
        if self.config.keep_findings == "first":
            return idx[::-1]
        count = [self.label_counts.get(label, 0) for label in labels]
        if self.config.keep_findings == "rarest":  # drop the commonest first
            return sorted(idx, key=lambda i: (-count[i], -i))
        return sorted(idx, key=lambda i: (count[i], -i))

    def _truncate(self, prompt: Prompt, parts: list[str], conditions: Conditions) -> None:
        """Keep the whole parts that fit. Only free text (a caption, or a first part too long on its own) is cut
        between words: a field part cut short would say "age" without the age."""
        budget = self.config.max_tokens
        kept: list[str] = []
        cost = 0  # tokens of the kept parts with their commas
        for part in parts:
            if 2 + cost + self.counter.count(part) - 2 > budget:
                break
            kept.append(part)
            cost += self.counter.part_cost(part)
        caption = " ".join((conditions.caption or "").split())  # as rendered
        if len(kept) < len(parts) and (not kept or (caption and caption in parts[len(kept)])):
            words = parts[len(kept)].split(" ")
            lo, hi = 0, len(words)  # the most words of the part that still fit
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if self.counter.count_parts([*kept, " ".join(words[:mid])]) <= budget:
                    lo = mid
                else:
                    hi = mid - 1
            if lo:
                kept.append(" ".join(words[:lo]).rstrip(" ,"))
        before = len(", ".join(parts).split())
        prompt.text = ", ".join(kept)
        prompt.tokens = self.counter.count_parts(kept)
        prompt.dropped.append(f"truncated: {before - len(prompt.text.split())} words")


class _Shortening:
    """Findings being shortened one drop at a time, with a running token estimate so that each drop costs O(1)
    instead of a recount of the whole prompt (long PadChest reports have hundreds of parts)."""

    def __init__(self, builder: PromptBuilder, conditions: Conditions):
        self.builder = builder
        self.cost = builder.counter.part_cost
        self.labels = [f.label for f in conditions.findings]
        self.locations = [list(f.locations) for f in conditions.findings]
        self.alive = [True] * len(conditions.findings)
        parts = render_parts(builder.template, conditions)
        self.estimate = 2 + sum(map(self.cost, parts)) - 1  # the last part has no comma after it

    def findings(self) -> list[Finding]:
        return [
            Finding(label, tuple(locs))
            for label, locs, alive in zip(self.labels, self.locations, self.alive, strict=True)
            if alive
        ]

    def _live(self) -> list[int]:
        return [i for i, alive in enumerate(self.alive) if alive]

    def _drop(self, i: int) -> None:
        self.alive[i] = False
        self.estimate -= self.cost(f"diagnosis {self.labels[i]}") + sum(
            self.cost(f"loc {x}") for x in self.locations[i]
        )

    def drop_pseudo(self):
        for name in _PSEUDO_DROP_ORDER:
            for i in reversed(self._live()):
                if self.labels[i].lower() == name:
                    self._drop(i)
                    yield f"pseudo: {self.labels[i]}"

    def drop_locations(self):
        live = self._live()
        for k in self.builder.priority_order([self.labels[i] for i in live]):
            i = live[k]
            while self.locations[i]:
                location = self.locations[i].pop()
                self.estimate -= self.cost(f"loc {location}")
                yield f"location: {self.labels[i]}@{location}"

    def drop_findings(self):
        live = self._live()
        for k in self.builder.priority_order([self.labels[i] for i in live]):
            self._drop(live[k])
            yield f"finding: {self.labels[live[k]]}"
