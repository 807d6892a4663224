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
