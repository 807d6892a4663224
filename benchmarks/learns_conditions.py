"""Does training learn what the prompts say? Phantom data, a small model, analytic detectors.

1. A phantom PadChest release with effusions (left or right), pacemakers, enlarged hearts and nodules, prepared at
   64 px with prompts of the findings alone ("chest x-ray, diagnosis pleural effusion, loc left").
2. A small random model; its VAE is fitted to the phantoms first so that decoded images mean something.
3. Full fine-tuning of UNet and text encoder with `cxrgen train`.
4. `cxrgen generate` for balanced prompts: effusion left vs right, pacemaker vs none, cardiomegaly vs normal heart,
   from the trained model and from the untrained one (same seeds).
5. Analytic detectors (cxrgen.phantom.detect), thresholds calibrated on real phantom images, judge each image.
Target (issue 6): at least 90% on binary findings. At most 30 minutes on this machine.
Run: .venv/bin/python benchmarks/learns_conditions.py [--steps 3000]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np

from cxrgen.cli import main as cli
from cxrgen.evaluate.imagesets import open_set
from cxrgen.phantom.detect import DETECTORS, calibrate

OUT = Path(__file__).parent / "out" / "learns_conditions"
# (detector, prompt for label 1, prompt for label 0)
TASKS = [
    (
        "effusion left (vs right)",
        "chest x-ray, diagnosis pleural effusion, loc left",
        "chest x-ray, diagnosis pleural effusion, loc right",
    ),
    ("pacemaker (vs none)", "chest x-ray, diagnosis pacemaker", "chest x-ray, diagnosis normal"),
    (
        "cardiomegaly (vs normal heart)",
        "chest x-ray, diagnosis cardiomegaly, loc cardiac",
        "chest x-ray, diagnosis normal",
    ),
]


def run(cmd: list[str]) -> None:
    code = cli(cmd)
    if code != 0:
        raise SystemExit(f"failed ({code}): cxrgen {' '.join(cmd)}")


def real_labels(rows: list[dict]) -> dict[str, np.ndarray]:
    """Per task, the label of each real image (None when the image is not part of that contrast)."""

    def has(row: dict, label: str, where: str | None = None) -> bool:
        return any(
            f["label"] == label and (where is None or where in f["locations"]) for f in row["findings"]
        )

    labels = {}
    for name, *_ in TASKS:
        out = []
        for r in rows:
            if name.startswith("effusion"):
                left, right = has(r, "pleural effusion", "left"), has(r, "pleural effusion", "right")
                out.append(1 if left and not right else 0 if right and not left else None)
            elif name.startswith("pacemaker"):
                out.append(1 if has(r, "pacemaker") else 0)
            else:
                out.append(1 if has(r, "cardiomegaly") else 0)
        labels[name] = np.array(out, dtype=object)
    return labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1600, help="phantom release size")
    parser.add_argument("--steps", type=int, default=3000, help="training steps")
    parser.add_argument("--per-prompt", type=int, default=40, help="generated images per prompt")
    parser.add_argument("--arch", default="small", choices=["tiny", "small"])
    args = parser.parse_args()
    start = time.perf_counter()
    shutil.rmtree(OUT, ignore_errors=True)
    release, data, model, run_dir = OUT / "release", OUT / "prepared", OUT / "model", OUT / "run"
    run(["phantom", "--out", str(release), "--n", str(args.images), "--size", "256", "--seed", "7"])
    run(["prepare", "--source", "padchest", "--csv", str(release / "phantom_padchest.csv.gz"), "--images", str(release),
         "--out", str(data), "--image.size", "64", "--prompts.template", "chest x-ray, {findings}", "--qc.contact-sheet", "0",
         "--splits.train", "0.9", "--splits.val", "0.05", "--splits.test", "0.05"])  # fmt: skip
    run(["make-tiny-model", "--out", str(model), "--arch", args.arch, "--image-size", "64"])
    untrained = OUT / "untrained-model"
    shutil.copytree(model, untrained)
    from cxrgen.train.vae import fit_vae

    t = time.perf_counter()
    error = fit_vae(model, data, steps=800, batch=16)
    print(f"VAE fitted in {time.perf_counter() - t:.0f} s (L1 {error:.3f})", flush=True)
    t = time.perf_counter()
    run(["train", "--data", str(data), "--model.base", str(model), "--out", str(run_dir), "--method", "full",
         "--full.train-text-encoder", "--max-steps", str(args.steps), "--batch-size", "32", "--optim.learning-rate", "5e-4",
         "--optim.lr-scheduler", "cosine", "--optim.warmup-steps", "100", "--sample-every", "-1", "--val-every", "-1",
         "--checkpoint-every", str(args.steps), "--log-every", "50", "--snr-gamma", "5"])  # fmt: skip
    train_seconds = time.perf_counter() - t
    prompts = sorted({p for _, a, b in TASKS for p in (a, b)})
    for name, base in (("trained", ["--run", str(run_dir)]), ("untrained", ["--model.base", str(untrained)])):
        run(["generate", *base, "--prompt", *prompts, "--n", str(args.per_prompt), "--steps", "25", "--guidance", "4",
             "--batch-size", "40", "--out", str(OUT / f"generated-{name}")])  # fmt: skip

    real = open_set(data, "train", "real")
    labels = real_labels(real.rows)
    real_images = [real.load(i) for i in range(len(real))]
    results = []
    for name, positive, negative in TASKS:
        detector = DETECTORS[name]
        mask = np.array([v is not None for v in labels[name]])
        scores = np.array([detector(real_images[i]) for i in np.nonzero(mask)[0]])
        threshold, real_accuracy = calibrate(scores, labels[name][mask].astype(int))
        row = {"finding": name, "threshold": threshold, "detector_on_real": real_accuracy, "chance": 0.5}
        for model_name in ("trained", "untrained"):
            gen = open_set(OUT / f"generated-{model_name}", "train", model_name)
            correct = []
            for i, r in enumerate(gen.rows):
                if r["text"] in (positive, negative):
                    correct.append((detector(gen.load(i)) > threshold) == (r["text"] == positive))
            row[model_name] = float(np.mean(correct))
        results.append(row)
    total = time.perf_counter() - start
    print(f"\n{args.images} phantom images, {args.arch} model, {args.steps} steps ({train_seconds / 60:.1f} min training), "
          f"{args.per_prompt} images per prompt; total {total / 60:.1f} min")  # fmt: skip
    print(f"{'finding':34s} {'detector on real':>16s} {'trained':>8s} {'untrained':>10s} {'chance':>7s}")
    for r in results:
        print(
            f"{r['finding']:34s} {r['detector_on_real']:16.1%} {r['trained']:8.1%} {r['untrained']:10.1%} {r['chance']:7.0%}"
        )
    ok = all(r["trained"] >= 0.9 for r in results)
    print(f"target >= 90% on every binary finding: {'PASS' if ok else 'FAIL'}")
    (OUT / "results.json").write_text(
        json.dumps({"results": results, "seconds": total, "args": vars(args)}, indent=2)
    )


if __name__ == "__main__":
    main()
