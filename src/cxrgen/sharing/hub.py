"""`--push-to-hub`: a run's or a synthetic set's shareable files to a Hugging Face Hub repo, in one commit.

Checked before any work (a valid repo id, a token), so a day of training does not end in a failed push; the files
are listed here, not by a pattern inside the upload, so what is sent is what `files_to_push` says."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from ..config import ConfigError
from ..errors import UserError
from .terms import restricted, terms_of

log = logging.getLogger(__name__)
RepoType = Literal["model", "dataset"]
# never sent: resumable state (optimizer moments, RNG), other trackers' local stores, the generator's journal,
# dot files (.patient_key_salt and the like)
KEPT_BACK = ("checkpoints", "wandb", "mlruns", ".journal")


class HubError(UserError):
    """The push failed; the message says what was kept and how to push again."""


def check_push(repo_id: str) -> None:
    """Fail now, not after the work, when the repo id is malformed or no token is at hand."""
    from huggingface_hub import get_token
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise ConfigError(f"--push-to-hub {repo_id}: not a Hub repo id (user/name): {exc}") from exc
    if "/" not in repo_id:
        raise ConfigError(f"--push-to-hub {repo_id}: give the owner too, e.g. your-name/{repo_id}")
    if get_token() is None:
        raise ConfigError("--push-to-hub needs a Hugging Face token: run `hf auth login`, or set HF_TOKEN")


def files_to_push(folder: Path) -> list[Path]:
    """Every file under `folder` except resumable state, local tracker stores, the journal and dot files."""
    files = []
    for path in sorted(folder.rglob("*")):
        parts = path.relative_to(folder).parts
        if path.is_file() and parts[0] not in KEPT_BACK and not any(p.startswith(".") for p in parts):
            files.append(path)
    return files


def push(
    folder: Path, repo_id: str, repo_type: RepoType, private: bool, message: str, source: str | None = None
) -> str:
    """Create the repo if needed and commit the folder's shareable files; returns the commit's URL. `source`: the
    release the data came from, whose terms a public push is reminded of."""
    from huggingface_hub import CommitOperationAdd, HfApi

    if restricted(source) and not private:
        log.warning(
            "pushing to a public repo what was made from %s: its terms limit who may receive it (see the card); "
            "--hub-private creates the repo private",
            terms_of(source).split(":", 1)[0],
        )
    files = files_to_push(folder)
    operations = [CommitOperationAdd(path.relative_to(folder).as_posix(), str(path)) for path in files]
    api = HfApi()
    try:
        with _online():
            api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
            commit = api.create_commit(repo_id, operations, commit_message=message, repo_type=repo_type)
    except Exception as exc:  # network, auth, quota: the outputs are complete either way
        raise HubError(
            f"pushing {folder} to the Hub repo {repo_id} failed ({type(exc).__name__}: {exc}). Everything is "
            f"written in {folder}; push it later with `hf upload {repo_id} {folder} --repo-type {repo_type}` "
            f"(leave out {', '.join(KEPT_BACK)})"
        ) from exc
    log.info("pushed %d file(s) to %s", len(files), commit.commit_url)
    return commit.commit_url


@contextmanager
def _online() -> Iterator[None]:
    """cxrgen turns the Hub's offline mode on when the base model is a local folder (set_offline_if_local); a push
    asked for by the user lifts it for the push. An HF_HUB_OFFLINE the user set stays, and the push says so."""
    from huggingface_hub import constants

    from ..model.loading import offline_set_here

    if not offline_set_here():
        yield
        return
    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = False
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved
