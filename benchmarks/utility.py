"""Does the fine-tuned model's synthetic data help a classifier when real data is scarce? Phantoms, measured.

Recipe: the learning benchmark's phantoms (64 px, one drawn finding at most: pleural effusion left or right,
pacemaker, cardiomegaly, nodule, or normal), its prepared data split by patient, and its model fully fine-tuned on
the training split (seed 0), read from its output folder (`--learned`; run `learns_conditions.py --seeds 0` first
when there is none: about 45 minutes on a 2-core CPU).
1. 100 real training images: whole patients drawn from the training split (the generative model saw the whole
   split, as in RoentGen's setting: a model trained on what a hospital has, a classifier for a scarce task).
2. N synthetic images from the fine-tuned model, their conditions drawn like the training split's
   (`cxrgen generate --like`).
3. `cxrgen evaluate --utility` against the test split: the same classifier trained on (a) the 100 real images,
   (b) them and the synthetic ones, (c) the synthetic ones alone, and the scarcity curve at 10/25/50/100 of them.
The effusion's side is not a separate label here: the classifier is scored per finding name.

Run: .venv/bin/python benchmarks/utility.py [--learned DIR] [--synthetic 400] [--arch cnn] [--steps 300]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from cxrgen.cli import main as cli
from cxrgen.contracts import MetricsDocument
from cxrgen.evaluate.html import with_interval
from cxrgen.evaluate.utility import draw_scarcity, patient_fractions

HERE = Path(__file__).parent
OUT = HERE / "out" / "utility"
LEARNED = HERE / "out" / "learns_conditions"


def run(cmd: list[str]) -> None:
    code = cli(cmd)
    if code != 0:
        raise SystemExit(f"failed ({code}): cxrgen {' '.join(cmd)}")


def learned_model(folder: Path) -> tuple[Path, Path]:
    """(prepared data, trained run) of the learning benchmark."""
    data, trained = folder / "prepared", folder / "run-seed0"
    if not (trained / "run.json").is_file():
        raise SystemExit(
            f"no trained run in {folder}: run `.venv/bin/python benchmarks/learns_conditions.py --seeds 0` first "
            "(about 45 minutes), or pass --learned with its output folder"
        )
    return data, trained


def real_subset(data: Path, n: int, seed: int, out: Path) -> Path:
    """`n` training images of whole patients as a prepared split of its own (files copied, rows kept)."""
    rows = [json.loads(line) for line in (data / "train" / "metadata.jsonl").read_text().splitlines() if line.strip()]
    chosen = patient_fractions(rows, [n / len(rows)], seed)[n / len(rows)]
    target = out / "train"
    shutil.rmtree(out, ignore_errors=True)
    target.mkdir(parents=True)
    for i in chosen:
        (target / rows[i]["file_name"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(data / "train" / rows[i]["file_name"], target / rows[i]["file_name"])
    (target / "metadata.jsonl").write_text("".join(json.dumps(rows[i]) + "\n" for i in chosen))
    return out


def scarcity_png(section: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.4), dpi=110)
    draw_scarcity(ax, section)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--learned", type=Path, default=LEARNED, help="the learning benchmark's output folder")
    parser.add_argument("--real", type=int, default=100, help="real training images for the classifier")
    parser.add_argument("--synthetic", type=int, default=400, help="synthetic images")
    parser.add_argument(
        "--arch", default="cnn", help="classifier (--utility.arch; ResNet-18 takes seconds a step on 2 cores)"
    )
    parser.add_argument("--size", type=int, default=64, help="classifier input size")
    parser.add_argument("--steps", type=int, default=300, help="classifier training steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--figure", type=Path, default=HERE.parent / "docs" / "utility_scarcity.png")
    args = parser.parse_args()
    minutes: dict[str, float] = {}
    t = time.perf_counter()
    data, trained = learned_model(args.learned)
    OUT.mkdir(parents=True, exist_ok=True)
    subset = real_subset(data, args.real, args.seed, OUT / "real-train")
    generated = OUT / f"synthetic-{args.synthetic}-seed{args.seed}"
    if not (generated / "train" / "metadata.jsonl").is_file():
        t = time.perf_counter()
        shutil.rmtree(generated, ignore_errors=True)
        gen = [
            "generate",
            "--run",
            str(trained),
            "--like",
            str(data),
            "--n",
            str(args.synthetic),
            "--out",
            str(generated),
        ]
        run([*gen, "--seed", str(args.seed), "--steps", "25", "--guidance", "7", "--batch-size", "40"])
        minutes["generate"] = (time.perf_counter() - t) / 60
    t = time.perf_counter()
    evaluation = OUT / "evaluation"
    run(
        [
            "evaluate",
            "--real",
            str(data),
            "--real-split",
            "test",
            "--generated",
            str(generated),
            "--train",
            str(subset),
            "--out",
            str(evaluation),
            "--utility",
            "--utility.arch",
            args.arch,
            "--utility.size",
            str(args.size),
            "--utility.steps",
            str(args.steps),
            "--utility.fractions",
            "0.1",
            "0.25",
            "0.5",
            "1",
            "--seed",
            str(args.seed),
            "--cache-dir",
            str(OUT / "cache"),
        ]
    )
    minutes["evaluate"] = (time.perf_counter() - t) / 60
    section = MetricsDocument.read(evaluation).sections["utility"]
    print(
        f"\n{section['images']['real_train']} real training images, {section['images']['synthetic']} synthetic, "
        f"{section['images']['test']} real test images; {section['method']}"
    )
    print(f"{'finding':<18} {'(a) real':>22} {'(b) real + synth':>22} {'(c) synthetic':>22} {'(b) - (a)':>24}")
    for name in [*section["findings"], "macro"]:
        cells = [
            section[key]["macro_auroc"] if name == "macro" else section[key]["per_finding"][name]
            for key in ("real", "real_synthetic", "synthetic", "difference")
        ]
        print(f"{name:<18} " + " ".join(f"{with_interval(c):>22}" for c in cells))
    print("scarcity (macro AUROC):")
    for p in section["scarcity"]:
        print(
            f"  {p['real_images']:>4} real: (a) {with_interval(p['real'])}  (b) {with_interval(p['real_synthetic'])}"
            f"  (b) - (a) {with_interval(p['difference'])}"
        )
    scarcity_png(section, args.figure)
    print(f"figure: {args.figure}; minutes: " + ", ".join(f"{k} {v:.1f}" for k, v in minutes.items()))


if __name__ == "__main__":
    main()
