from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Keep built tokenizers and caches out of the user's home."""
    os.environ["CXRGEN_CACHE"] = str(tmp_path_factory.mktemp("cxrgen-cache"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    yield


@pytest.fixture(scope="session")
def quirk_release(tmp_path_factory):
    from helpers import write_quirk_release

    root = tmp_path_factory.mktemp("padchest")
    csv = write_quirk_release(root)
    return root, csv


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A random tiny Stable Diffusion pipeline (64 px) with the exact CLIP tokenizer."""
    from cxrgen.model.random_weights import TinyModelConfig, make_tiny_model

    return make_tiny_model(TinyModelConfig(out=str(tmp_path_factory.mktemp("models") / "tiny")))


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """A prepared dataset of 64 px phantom radiographs with train/val/test splits."""
    from helpers import prepare_phantoms

    out = prepare_phantoms(tmp_path_factory.mktemp("phantom"), n=40, seed=3, resolution=64)
    assert (out / "val" / "metadata.jsonl").read_text().strip(), "the fixture needs a val split"
    return out


@pytest.fixture(scope="session")
def smoke_run(tiny_dataset, tiny_model, tmp_path_factory):
    """A finished `cxrgen train --preset cpu-smoke` LoRA run on the tiny model and dataset (treat as read-only)."""
    from cxrgen.cli import main

    out = tmp_path_factory.mktemp("smoke-run") / "run"
    args = ["train", "--preset", "cpu-smoke", "--data", str(tiny_dataset), "--model.base", str(tiny_model)]
    assert main([*args, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """`cxrgen demo` with small settings, run once for the session: (its output folder, what it printed). Treat the
    folder as read-only: the app's tests look at it, the demo's test reruns it in a copy."""
    import contextlib
    import io

    from cxrgen.cli import main

    out = tmp_path_factory.mktemp("demo") / "demo-output"
    args = ["demo", "--out", str(out), "--n", "48", "--vae-steps", "4", "--steps", "4", "--images", "8"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main([*args, "--workers", "1"]) == 0
    return out, printed.getvalue()


@pytest.fixture(scope="session")
def demo_output(request):
    """A prepared dataset, a finished LoRA run, a synthetic set and an evaluation, as the app is pointed at (the
    demo above). CXRGEN_DEMO_OUTPUT=DIR uses a demo already made (`make demo`), as for the screenshots in docs/."""
    from pathlib import Path

    if os.environ.get("CXRGEN_DEMO_OUTPUT"):
        return Path(os.environ["CXRGEN_DEMO_OUTPUT"]).resolve()
    return request.getfixturevalue("demo_run")[0]
