"""`cxrgen generate`: plan, load, sample and write through the `Generator`; print what was made."""

from __future__ import annotations

from ..contracts import GenerateManifest, metadata_path
from ..sharing.cards import README
from ..sharing.hub import push
from ..sharing.terms import data_source
from .config import GenerateConfig
from .runner import GenerateResult, Generator

Config = GenerateConfig


def run(config: GenerateConfig) -> GenerateResult:
    """Generate; with --push-to-hub, push the set once it is complete (not while shards remain)."""
    generator = Generator(config)
    result = generator.run()
    if config.push_to_hub and result.manifest is not None:
        source = data_source(generator.source.data)
        result.pushed = push(result.out, config.push_to_hub, "dataset", config.hub_private, "cxrgen generate", source)
    return result


def summarize(result: GenerateResult) -> int:
    if not result.is_main:
        return 0
    rate = f" at {result.images_per_s:.2f} img/s" if result.images_per_s else ""
    print(f"generated {result.made} image(s) in {result.seconds:.1f} s{rate}")
    if result.manifest is not None:
        print(f"  {result.manifest.images} synthetic images: {metadata_path(result.out, result.split)}")
        print(f"  provenance: {GenerateManifest.path(result.out)}")
        print(f"  dataset card: {result.out / README}")
        if result.pushed:
            print(f"  pushed to {result.pushed}")
    else:
        print(f"  {result.remaining} image(s) remain for other shards; rerun without --shard when all are done")
    return 0
