"""Patient re-identification risk: could a synthetic image be linked to a training patient?

A Siamese verification network (after Packhäuser et al. 2022) is trained on the training set's patients with two
or more images: one backbone embeds both images, and a learned weighting of the embeddings' absolute difference
gives the probability that they show the same patient. First, how well it verifies at all: its AUROC on pairs of
held-out real patients (the real set, whose patients are not in training), with DeLong's interval; the risk
figures below are only as good as this number. Then every synthetic image is compared with every training image:
its highest same-patient probability. The operating threshold is set on held-out real images, which are
independent of training by construction: the (1 - alpha) quantile of their own highest probability against the
training images. The share of synthetic images above it is the re-identification risk; independent images sit
near alpha, copies of training images far above.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import ConfigError, option
from ..contracts import MetricsDocument
from .html import as_figure, escape, figure, note, pair_html, table, with_interval
from .imagesets import ImageSet
from .intervals import delong, wilson
from .metric import METRICS, EvaluationContext, Metric
from .networks import backbone, digest, exposed, fit, outputs, overlap_warning, pixels, shifted


class Siamese(torch.nn.Module):
    """p(same patient | a, b) = sigmoid(c - w . |e(a) - e(b)|), e a backbone's embedding and w >= 0, so that an
    image paired with itself gets the highest probability the network can give."""

    def __init__(self, embed: torch.nn.Module, dim: int):
        super().__init__()
        self.embed = embed
        self.raw_weights = torch.nn.Parameter(torch.zeros(dim))
        self.bias = torch.nn.Parameter(torch.tensor(2.0))

    def logit(self, ea: torch.Tensor, eb: torch.Tensor) -> torch.Tensor:
        return self.bias - ((ea - eb).abs() * torch.nn.functional.softplus(self.raw_weights)).sum(-1)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.logit(self.embed(a), self.embed(b))


def patient_ids(images: ImageSet) -> np.ndarray:
    """Each image's patient as an integer id."""
    return np.unique(np.asarray(images.patient_keys()), return_inverse=True)[1]


def by_patient(patients: np.ndarray) -> list[np.ndarray]:
    """The images of each patient with two or more, grouped once (sorting, not a scan per patient)."""
    order = np.argsort(patients, kind="stable")
    groups = np.split(order, np.flatnonzero(np.diff(patients[order])) + 1)
    return [g for g in groups if len(g) >= 2]


def sample_pairs(
    patients: np.ndarray, groups: list[np.ndarray], n: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n pairs, half of one patient (from `groups`, the patients with two or more images) and half of two."""
    a, b = [], []
    for k in torch.randint(0, len(groups), (n // 2,), generator=generator).tolist():
        i, j = torch.randperm(len(groups[k]), generator=generator)[:2].tolist()
        a.append(groups[k][i])
        b.append(groups[k][j])
    m = n - n // 2
    x = torch.randint(0, len(patients), (m,), generator=generator).numpy()
    y = torch.randint(0, len(patients), (m,), generator=generator).numpy()
    clash = patients[x] == patients[y]
    while clash.any():  # redraw pairs that happen to share a patient
        y[clash] = torch.randint(0, len(patients), (int(clash.sum()),), generator=generator).numpy()
        clash = patients[x] == patients[y]
    same = torch.cat([torch.ones(n // 2), torch.zeros(m)])
    return torch.as_tensor(np.concatenate([a, x]).astype(np.int64)), torch.as_tensor(np.concatenate([b, y])), same


def verification_pairs(patients: np.ndarray, negatives_per_positive: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Same-patient pairs of a held-out set (up to 10 a patient, 5,000 in all) and random different-patient pairs."""
    rng = np.random.default_rng(seed)
    positive = []
    for images in by_patient(patients):  # at most 10 pairs a patient: a few patients with many images do not decide
        pairs = [(i, j) for k, i in enumerate(images) for j in images[k + 1 :]]
        positive += [pairs[k] for k in rng.permutation(len(pairs))[:10]]
    if len(positive) > 5000:
        positive = [positive[k] for k in rng.choice(len(positive), 5000, replace=False)]
    want = max(len(positive) * negatives_per_positive, 200)
    x, y = rng.integers(0, len(patients), want), rng.integers(0, len(patients), want)
    keep = patients[x] != patients[y]
    negative = list(zip(x[keep], y[keep], strict=True))
    pairs = np.asarray(positive + negative, dtype=np.int64).reshape(-1, 2)
    return pairs, np.r_[np.ones(len(positive), bool), np.zeros(len(negative), bool)]


def highest(
    model: Siamese, queries: torch.Tensor, train: torch.Tensor, chunk: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """Each query's highest same-patient logit over the training embeddings, and which image. With w >= 0,
    w . |a - b| is the L1 distance of w * a and w * b, so each block is one cdist."""
    with torch.no_grad():
        w = torch.nn.functional.softplus(model.raw_weights)
        gallery = train * w
        best, where = [], []
        for lo in range(0, len(queries), chunk):
            distance, index = torch.cdist(queries[lo : lo + chunk] * w, gallery, p=1).min(dim=1)
            best.append(model.bias - distance)
            where.append(index)
    return torch.cat(best).numpy(), torch.cat(where).numpy()


@dataclass
class ReidOptions:
    enabled: bool = option(False, "train a same-patient network on the training patients and link synthetic images")
    arch: str = option("resnet18", "embedding network: a torchvision name, timm:<arch>, or cnn")
    weights: str | None = option(
        None, "a trained verification network (safetensors from an earlier run), instead of training one", path=True
    )
    size: int = option(128, "input size in pixels")
    dim: int = option(128, "embedding size")
    steps: int = option(1000, "training steps")
    batch_size: int = option(32, "pairs per training step (half same patient)")
    learning_rate: float = option(3e-3, "AdamW peak learning rate (one-cycle schedule)")
    alpha: float = option(0.05, "share of independent (held-out real) images above the operating threshold")
    pairs_shown: int = option(8, "closest synthetic-training pairs shown in the report")


def reidentify(
    train: ImageSet, generated: ImageSet, held_out: ImageSet, o: ReidOptions, ctx: EvaluationContext
) -> dict:
    patients = patient_ids(train)
    groups = by_patient(patients)
    if len(groups) < 2:
        return {"skipped": "fewer than 2 training patients have two or more images: nothing to learn identity from"}
    train_px, gen_px, held_px = (pixels(s, o.size, ctx.config.cache_dir) for s in (train, generated, held_out))

    def make() -> Siamese:
        return Siamese(backbone(o.arch, o.dim, None, ctx.config.allow_pickle), o.dim)

    def loss(net: torch.nn.Module, generator: torch.Generator) -> torch.Tensor:
        a, b, same = sample_pairs(patients, groups, o.batch_size, generator)
        varied = [exposed(shifted(train_px[i], generator), generator).to(ctx.device) for i in (a, b)]
        logits = net(*varied)  # each image moved and exposed anew: what two studies of one patient differ by
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, same.to(ctx.device))

    if o.weights:
        from safetensors.torch import load_file

        model = make()
        model.load_state_dict(load_file(o.weights))
        record: dict[str, Any] = {"weights": o.weights}
    else:
        inputs = {
            "arch": o.arch,
            "size": o.size,
            "dim": o.dim,
            "batch": o.batch_size,
            "data": digest(train_px, patients),
        }
        fitted = fit(
            "reid", inputs, make, loss, o.steps, o.learning_rate, ctx.config.seed, ctx.config.cache_dir, ctx.device
        )
        model, record = fitted.net, {k: fitted.log[k] for k in ("seconds", "cached", "steps")}
        record["loss"] = fitted.log["loss"][-1][1]
    model.eval()
    embed = model.embed
    e_train, e_gen, e_held = (outputs(embed, x, ctx.device) for x in (train_px, gen_px, held_px))
    model.cpu()

    held_patients = patient_ids(held_out)
    pairs, same = verification_pairs(held_patients, 5, ctx.config.seed)
    verification: dict[str, Any] = {"skipped": "no held-out patient has two images"}
    if same.any():
        with torch.no_grad():
            p = torch.sigmoid(model.logit(e_held[pairs[:, 0]], e_held[pairs[:, 1]])).numpy()
        verification = delong(same, p) or verification
    held_logit, _ = highest(model, e_held, e_train)  # logits: probabilities near 1 would tie in float32
    gen_logit, gen_index = highest(model, e_gen, e_train)
    cut = float(np.quantile(held_logit, 1 - o.alpha))
    above, held_above = int((gen_logit > cut).sum()), int((held_logit > cut).sum())
    lo, hi = wilson(above, len(gen_logit))
    held_lo, held_hi = wilson(held_above, len(held_logit))
    threshold = float(torch.sigmoid(torch.tensor(cut)))
    gen_best, held_best = (torch.sigmoid(torch.from_numpy(x)).numpy() for x in (gen_logit, held_logit))
    order = np.argsort(-gen_best)[: o.pairs_shown]
    warning = overlap_warning(held_out, train)
    return {
        **({"warning": warning} if warning else {}),
        "network": {"arch": o.arch, "size": o.size, "dim": o.dim, "training_patients": len(groups)}
        | {"training_images": int(sum(len(g) for g in groups))}
        | record,
        "verification_auroc": verification,
        "threshold": threshold,
        "alpha": o.alpha,
        "above_threshold": above,
        "share_above": {"value": above / len(gen_best), "low": lo, "high": hi},
        "held_out_share_above": {"value": held_above / len(held_logit), "low": held_lo, "high": held_hi},
        "generated_best": [round(float(v), 4) for v in gen_best],
        "held_out_best": [round(float(v), 4) for v in held_best],
        "closest_pairs": [
            {
                "generated": str(generated.files[i]),
                "train": str(train.files[gen_index[i]]),
                "probability": float(gen_best[i]),
                "above": bool(gen_logit[i] > cut),
            }
            for i in order
        ],
    }


def verdict(section: dict[str, Any]) -> str:
    """Synthetic images against held-out real ones above the same threshold: a risk only when their Wilson
    intervals part (the threshold's own noise shows in the held-out share)."""
    auroc = section["verification_auroc"]
    if "value" not in auroc:
        return "re-identification risk not measurable: the network could not be checked on held-out patients"
    share, held = section["share_above"], as_figure(section["held_out_share_above"])
    quality = f"verification AUROC {with_interval(auroc)}"
    if auroc.get("low", auroc["value"]) < 0.7:
        return f"inconclusive: the network verifies patients poorly ({quality})"
    compared = (
        f"{share['value']:.1%} of synthetic images above the threshold, {held['value']:.1%} of held-out real ones"
    )
    if "low" in held and share["low"] > held["high"]:
        return f"risk: {compared}: synthetic images sit closer to training patients than independent ones ({quality})"
    return f"no excess linkage detected: {compared} (upper bound {share['high']:.1%}; {quality})"


@METRICS.register
class ReidMetric(Metric):
    """Whether synthetic images can be linked to training patients by a same-patient network."""

    name = "reid"
    title = "Re-identification: can a synthetic image be linked to a training patient?"
    Options = ReidOptions
    not_measured = "give --reid and --train (training images with patient keys); it trains a verification network"
    question = "safe"

    def check_config(self, config: Any) -> None:
        o: ReidOptions = config.reid
        if o.enabled and not config.train:
            raise ConfigError("--reid needs --train: the training images, with their patients (a prepared dataset)")
        if not 0 < o.alpha < 1:
            raise ConfigError(f"--reid.alpha must be a share in (0, 1), not {o.alpha}")
        if o.steps < 1 or o.batch_size < 2 or o.size < 16 or o.dim < 1:
            raise ConfigError("--reid needs steps >= 1, batch-size >= 2, size >= 16 and dim >= 1")

    def asked_for(self, ctx: EvaluationContext) -> bool:
        return ctx.options(self).enabled

    def applies(self, ctx: EvaluationContext) -> str | None:
        assert ctx.train is not None
        if not ctx.train.rows or not any(r.get("patient_key") for r in ctx.train.rows):
            return f"{ctx.train.root} has no patient keys (metadata.jsonl): identity cannot be learned"
        return None

    def compute(self, ctx: EvaluationContext) -> dict[str, Any]:
        assert ctx.train is not None
        return reidentify(ctx.train, ctx.generated, ctx.real, ctx.options(self), ctx)

    def verdict(self, section: dict[str, Any], doc: MetricsDocument) -> tuple[str, str]:
        net = section["network"]
        return verdict(section), (section.get("warning", "") + "; " if section.get("warning") else "") + (
            f"{len(section['generated_best'])} synthetic images against {doc.sets['train']['images']} training "
            f"images; {net['arch']} at {net['size']} px, "
            + (
                f"weights {net['weights']}"
                if "weights" in net
                else f"trained on {net['training_patients']} patients with two or more images"
            )
            + f"; the threshold lets {section['alpha']:.0%} of {len(section['held_out_best'])} held-out "
            "real images through; an image close to many training images (a generic one) also scores high: look "
            "at the pairs"
        )

    def summary_lines(self, section: dict[str, Any], doc: MetricsDocument) -> list[str]:
        auroc = section["verification_auroc"]
        first = "re-identification: verification AUROC on held-out patients " + (
            with_interval(auroc) if "value" in auroc else f"not measured ({auroc.get('skipped')})"
        )
        return [
            first,
            f"  {section['above_threshold']} of {len(section['generated_best'])} synthetic images "
            f"({with_interval(section['share_above'])}) above the threshold {section['threshold']:.3f} "
            f"that {section['alpha']:.0%} of held-out real images pass",
        ] + ([f"  warning: {section['warning']}"] if section.get("warning") else [])

    def report_html(self, section: dict[str, Any], doc: MetricsDocument, folder: Path) -> str:
        out = [f"<p>{escape(verdict(section))}</p>", note(section["warning"]) if section.get("warning") else ""]
        net = section["network"]
        rows = [
            [
                "verification AUROC (held-out patients)",
                with_interval(section["verification_auroc"]) if "value" in section["verification_auroc"] else "-",
            ],
            ["operating threshold", f"{section['threshold']:.3f}"],
            ["synthetic images above it", f"{section['above_threshold']} ({with_interval(section['share_above'])})"],
            [
                "held-out real images above it",
                f"{with_interval(section['held_out_share_above'])} (set to {section['alpha']})",
            ],
        ]
        out.append(table(["", ""], rows))
        for pair in section["closest_pairs"]:
            flag = '<span class="flag">ABOVE</span> ' if pair["above"] else ""
            caption = f"{flag}p(same patient)={pair['probability']:.3f}"
            out.append(pair_html(folder / pair["generated"], folder / pair["train"], lambda caption=caption: caption))

        def histogram(ax: Any) -> None:
            bins = np.linspace(0, 1, 41)
            ax.hist(section["held_out_best"], bins=bins, alpha=0.6, color="#888", label="held-out real", density=True)
            ax.hist(section["generated_best"], bins=bins, alpha=0.6, color="#2a7", label="synthetic", density=True)
            ax.axvline(section["threshold"], color="#b00", ls="--", label="threshold")
            ax.set_xlabel("highest same-patient probability against the training images")
            ax.legend()

        trained = (
            f"trained for {net.get('steps')} steps on {net['training_images']} images of {net['training_patients']} "
            "patients with two or more"
            if "weights" not in net
            else f"weights from {net['weights']}"
        )
        return (
            "".join(out)
            + figure(histogram)
            + note(
                f"{net['arch']} at {net['size']} px, {trained}. The threshold is the {1 - section['alpha']:.0%} "
                "quantile of held-out real images' highest probability against the training images (they are "
                "independent of training by construction); the interval of the synthetic share is Wilson's."
            )
        )
