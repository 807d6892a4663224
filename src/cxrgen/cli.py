"""The `cxrgen` command: a thin layer over each command module's `Config`, `run` and `summarize`.

Every command module has one shape: `Config` (a settings dataclass), `run(config)` (the library function, which
returns a typed result: what `cxrgen.api` returns too) and `summarize(result)` (prints it, returns the exit code).
Modules are imported only for the command that runs, so `cxrgen prepare` never pays for torch's start-up.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from . import __version__
from .config import ConfigError, add_arguments, load, namespace_to_overrides, to_dict
from .errors import UserError

EXIT_USAGE = 2


@dataclass(frozen=True)
class Command:
    name: str
    module: str  # holds Config, run(config) -> result and summarize(result) -> exit code
    help: str
    description: str
    epilog: str = ""
    presets: str | None = None  # a module with PRESETS (names) and preset_values(name) -> settings


COMMANDS = (
    Command(
        "prepare",
        "cxrgen.prepare.command",
        "turn a raw release into image-prompt pairs with patient-level splits",
        "Read a release (PadChest, MIMIC-CXR-JPG, CheXpert or a folder), filter it, build prompts, convert images\n"
        "to 8-bit PNGs and write <out>/<split>/metadata.jsonl, prepare.json and rejected.csv.",
        "examples:\n"
        "  cxrgen prepare --source padchest --csv PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz \\\n"
        "      --images padchest/ --out data/padchest-512\n"
        "  cxrgen prepare --source padchest --csv labels.csv.gz --out data/meta --metadata-only\n"
        "  cxrgen prepare --source folder --images my_xrays/ --captions captions.csv --out data/mine\n"
        "  cxrgen prepare --config configs/prepare-padchest.yaml --shard 0/4   # then once without --shard",
    ),
    Command(
        "train",
        "cxrgen.train.command",
        "fine-tune Stable Diffusion on a prepared dataset (DreamBooth-LoRA or full)",
        "Train a LoRA (optionally on top of earlier LoRAs, with prior preservation) or fine-tune the UNet (and\n"
        "text encoder). Checkpoints resume exactly; sample grids, validation loss and TensorBoard logs land in\n"
        "the run folder. Several GPUs: accelerate launch -m cxrgen train ...",
        "examples:\n"
        "  cxrgen train --preset gpu-8gb --data data/padchest-512 \\\n"
        "      --model.base stable-diffusion-v1-5/stable-diffusion-v1-5 --out runs/cxr-lora --prior.enabled\n"
        "  cxrgen train --preset gpu-16gb --method full --data data/padchest-512 --model.base sd15/ --out runs/full\n"
        "  cxrgen train --data data/effusion --model.base sd15/ --lora.stack runs/cxr-lora --out runs/effusion\n"
        "  cxrgen train ... --resume latest      # continue an interrupted run",
        presets="cxrgen.train.config",
    ),
    Command(
        "generate",
        "cxrgen.generate.command",
        "generate labelled synthetic chest X-rays from structured conditions",
        "Make images from condition flags, a conditions file, a prepared dataset's distribution (optionally\n"
        "re-weighted toward chosen findings) or raw prompts, with a base model, LoRAs or a training run.\n"
        "Writes the prepared-dataset layout with per-image seeds and provenance; every file is marked SYNTHETIC.",
        "examples:\n"
        "  cxrgen generate --run runs/cxr-lora --age 60 --sex F --projection PA \\\n"
        "      --finding 'pleural effusion@left,costophrenic angle' --n 16 --out synth/effusion\n"
        "  cxrgen generate --run runs/cxr-lora --like data/padchest-512 --reweight 'pneumothorax=10' "
        "--n 5000 --out synth/mix\n"
        "  cxrgen generate --model.base sd15/ --loras runs/cxr-lora runs/effusion:0.8 "
        "--conditions plan.csv --out synth/plan\n"
        "  accelerate launch --multi_gpu --num_processes 4 -m cxrgen generate ...   # shards over GPUs",
    ),
    Command(
        "evaluate",
        "cxrgen.evaluate.command",
        "measure generated images: fidelity, diversity, memorization, prompt adherence, forgetting",
        "FID and KID (Inception, chest-X-ray or any backbone features) with 95% intervals, precision/recall/\n"
        "density/coverage, MS-SSIM diversity, nearest training images and likely copies, classifier AUROC of the\n"
        "requested findings, and the bird test. Writes metrics.json and a self-contained report.html.",
        "examples:\n"
        "  cxrgen evaluate --real data/padchest-512 --generated synth/mix --train data/padchest-512 --out eval/mix\n"
        "  cxrgen evaluate ... --extractors inception xrv --weights xrv=densenet121-res224-all.pt --allow-pickle\n"
        "  cxrgen evaluate ... --run runs/cxr-lora --forgetting.enabled",
    ),
    Command(
        "report",
        "cxrgen.evaluate.report",
        "write report.html for an evaluation folder",
        "One self-contained HTML page: sample grids per condition, nearest-neighbour pairs, metric tables with\n"
        "intervals, training loss curves and plots, from <folder>/metrics.json.",
    ),
    Command(
        "app",
        "cxrgen.app.command",
        "a local web page: browse datasets, compose and generate, watch training, read reports",
        "A page in the browser over the same library: prepared datasets (counts, filtered images, what quality\n"
        "control rejected), generation from structured conditions with the exact prompt and a progress bar,\n"
        "training runs' curves and sample grids, and evaluation reports. Offline; local unless --host and --auth.",
        "examples:\n"
        "  cxrgen app --data demo-output/prepared --runs demo-output/run --evals demo-output/evaluation\n"
        "  cxrgen app --data data/ --runs runs/ --evals eval/      # folders of datasets, runs and evaluations\n"
        "  cxrgen app --runs runs/ --host 0.0.0.0 --auth alice:s3cret   # reachable by others, with a password",
    ),
    Command(
        "vocab",
        "cxrgen.prepare.vocab",
        "list a dataset's finding labels and locations, with counts per split and other spellings",
        "The vocabulary cxrgen prepare recorded for a dataset (or one counted from a generated set's metadata):\n"
        "label filters, generate's name checks and adherence read names through it.",
        "examples:\n"
        "  cxrgen vocab data/padchest-512 --kind labels --top 30\n"
        "  cxrgen vocab data/padchest-512 --name 'Pleural Effusion right side' effusion",
    ),
    Command(
        "make-tiny-model",
        "cxrgen.model.random_weights",
        "write a random Stable Diffusion pipeline offline (tiny, or the SD 1.5 architecture)",
        "A diffusers pipeline folder with random weights and the exact CLIP tokenizer, for tests, the demo and\n"
        "speed or memory work without downloads.",
    ),
    Command(
        "phantom",
        "cxrgen.phantom.command",
        "write a PadChest-format release of phantom radiographs with known findings",
        "Phantom chest radiographs (lungs, heart, ribs, diaphragm, noise, exposure and positioning variation) with\n"
        "findings drawn where the labels say, as the real PadChest CSV and 16-bit PNGs in numbered folders.",
    ),
    Command(
        "demo",
        "cxrgen.demo",
        "run the pipeline end to end on phantom data (offline, CPU)",
        "Phantom release -> prepare -> train -> ... Prints where each artefact is.",
    ),
)


def command_module(command: Command) -> Any:
    return importlib.import_module(command.module)


class _Formatter(argparse.RawDescriptionHelpFormatter):
    pass


def build_parser(chosen: str | None = None) -> argparse.ArgumentParser:
    """Every command, but only `chosen` with its settings: their modules may import torch (seconds)."""
    parser = argparse.ArgumentParser(
        prog="cxrgen",
        description="Adapt Stable Diffusion to chest X-rays: prepare a release, fine-tune, generate, evaluate.",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"cxrgen {__version__}")
    parser.add_argument("-v", "--verbose", dest="_verbose", action="count", default=0, help="more log output")
    sub = parser.add_subparsers(dest="_command", metavar="COMMAND")
    for command in COMMANDS:
        p = sub.add_parser(
            command.name,
            help=command.help,
            description=command.description,
            epilog=command.epilog,
            formatter_class=_Formatter,
        )
        if command.name != chosen:
            continue
        # -v also after the command; counted on top of any given before it
        p.add_argument(
            "-v",
            "--verbose",
            dest="_verbose",
            action="count",
            default=argparse.SUPPRESS,
            help="more log output (-vv: debug)",
        )
        if command.presets:
            names = importlib.import_module(command.presets).PRESETS
            p.add_argument(
                "--preset",
                dest="_preset",
                choices=names,
                help="settings for a hardware class (under --config and flags)",
            )
        p.add_argument("--config", dest="_config", metavar="YAML", help="settings file; flags given here override it")
        p.add_argument(
            "--print-config",
            dest="_print_config",
            action="store_true",
            help="print the resolved settings and exit",
        )
        add_arguments(p, command_module(command).Config)
        p.set_defaults(_spec=command)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # the command is the first word that is not an option (-v, --version take no value)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(chosen if chosen in {c.name for c in COMMANDS} else None)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args._verbose > 1 else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s" if args._verbose else "%(message)s",
    )
    spec: Command | None = getattr(args, "_spec", None)
    if spec is None:
        parser.print_help()
        return EXIT_USAGE
    config = None
    try:
        preset = getattr(args, "_preset", None)
        base = importlib.import_module(spec.presets).preset_values(preset) if preset else None
        module = command_module(spec)
        config = load(module.Config, args._config, namespace_to_overrides(args), base)
        if args._print_config:
            print(yaml.safe_dump(to_dict(config), sort_keys=False), end="")
            return 0
        return module.summarize(module.run(config))
    except ConfigError as exc:
        print(f"cxrgen {spec.name}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"cxrgen {spec.name}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as exc:
        if _is_user_error(exc) and not args._verbose:
            print(f"cxrgen {spec.name}: error: {_naming_the_flag(exc, config)}", file=sys.stderr)
            return 1
        raise


def _naming_the_flag(exc: Exception, config: Any) -> str:
    """An OS error on a path the user gave (e.g. `--out /proc/x`), said with the flag that gave it."""
    if not isinstance(exc, OSError) or not exc.filename or not dataclasses.is_dataclass(config):
        return str(exc)
    failed = Path(str(exc.filename))
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if isinstance(value, str) and value and (failed == Path(value) or Path(value) in failed.parents):
            return f"--{field.name.replace('_', '-')} {value}: {exc.strerror or exc} ({failed})"
    return str(exc)


def _is_user_error(exc: Exception) -> bool:
    """Errors about the user's inputs or machine (a missing or unwritable path, a full disk, a model that does not
    load), shown as one line (run with -v for the traceback)."""
    return isinstance(exc, OSError | ValueError | UserError)
