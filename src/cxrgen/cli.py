"""The `cxrgen` command: one subcommand per stage, each a thin layer over a library function."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

import yaml

from . import __version__
from .config import ConfigError, add_arguments, load, namespace_to_overrides, to_dict

EXIT_USAGE = 2


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    def _get_help_string(self, action: argparse.Action) -> str | None:
        return action.help  # defaults are written into the help text by config.add_arguments


def _config_command(
    sub, name: str, cls: type, run: Callable, help_text: str, description: str, epilog: str = ""
) -> None:
    p = sub.add_parser(
        name, help=help_text, description=description, epilog=epilog, formatter_class=_Formatter
    )
    p.add_argument(
        "--config", dest="_config", metavar="YAML", help="settings file; flags given here override it"
    )
    p.add_argument(
        "--print-config",
        dest="_print_config",
        action="store_true",
        help="print the resolved settings as YAML and exit",
    )
    add_arguments(p, cls)
    p.set_defaults(_cls=cls, _run=run)


def _prepare(config) -> int:
    from .prepare import print_summary, run_prepare

    print_summary(run_prepare(config))
    return 0


def _phantom(config) -> int:
    from .phantom.command import run_phantom

    run_phantom(config)
    return 0


def _demo(config) -> int:
    from .demo import run_demo

    return run_demo(config)


def build_parser() -> argparse.ArgumentParser:
    from .demo import DemoConfig
    from .phantom.command import PhantomConfig
    from .prepare import PrepareConfig

    parser = argparse.ArgumentParser(
        prog="cxrgen",
        description="Adapt Stable Diffusion to chest X-rays: prepare a release, fine-tune, generate, evaluate.",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"cxrgen {__version__}")
    parser.add_argument("-v", "--verbose", dest="_verbose", action="count", default=0, help="more log output")
    sub = parser.add_subparsers(dest="_command", metavar="COMMAND")
    _config_command(
        sub,
        "prepare",
        PrepareConfig,
        _prepare,
        "turn a raw release into image-prompt pairs with patient-level splits",
        "Read a release (PadChest, MIMIC-CXR-JPG, CheXpert or a folder), filter it, build prompts, convert images\n"
        "to 8-bit PNGs and write <out>/<split>/metadata.jsonl, prepare.json and rejected.csv.",
        "examples:\n"
        "  cxrgen prepare --source padchest --csv PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz \\\n"
        "      --images padchest/ --out data/padchest-512\n"
        "  cxrgen prepare --source padchest --csv labels.csv.gz --out data/meta --metadata-only\n"
        "  cxrgen prepare --source folder --images my_xrays/ --captions captions.csv --out data/mine\n"
        "  cxrgen prepare --config configs/prepare-padchest.yaml --shard 0/4   # then once without --shard",
    )
    _config_command(
        sub,
        "phantom",
        PhantomConfig,
        _phantom,
        "write a PadChest-format release of phantom radiographs with known findings",
        "Phantom chest radiographs (lungs, heart, ribs, diaphragm, noise, exposure and positioning variation) with\n"
        "findings drawn where the labels say, as the real PadChest CSV and 16-bit PNGs in numbered folders.",
    )
    _config_command(
        sub, "demo", DemoConfig, _demo,
        "run the pipeline end to end on phantom data (offline, CPU)",
        "Phantom release -> prepare -> (later stages as they land). Prints where each artefact is.",
    )  # fmt: skip
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args._verbose > 1 else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s" if args._verbose else "%(message)s",
    )
    if not getattr(args, "_command", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        config = load(args._cls, args._config, namespace_to_overrides(args))
        if args._print_config:
            print(yaml.safe_dump(to_dict(config), sort_keys=False), end="")
            return 0
        return args._run(config)
    except ConfigError as exc:
        print(f"cxrgen {args._command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"cxrgen {args._command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as exc:
        if _is_user_error(exc) and not args._verbose:
            print(f"cxrgen {args._command}: error: {exc}", file=sys.stderr)
            return 1
        raise


def _is_user_error(exc: Exception) -> bool:
    """Errors about the user's inputs, shown as one line (run with -v for the traceback)."""
    from .readers import TableError
    from .tokens import TokenizerError

    return isinstance(exc, TableError | TokenizerError | FileNotFoundError | ValueError)
