"""Networks that evaluation trains for itself: the utility classifiers and the re-identification network.

One home for what they share: a set's images as one small tensor (cached), a backbone by name (torchvision,
timm, or `cnn`, a small network for CPU smoke runs) from random init or a weights file, and a training loop with
fixed steps and seed whose log (loss, time) and weights are cached by everything that went into them, so that a
rerun of an evaluation trains nothing twice.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..errors import UserError
from ..fileio import atomic_path, cache_root
from .imagesets import ImageSet

log = logging.getLogger(__name__)
PIXELS_VERSION = 1  # raise when how images become tensors changes: old caches then miss
TRAINING_VERSION = 2  # raise when how a network is trained changes (loss, augmentation, optimizer, architecture)


class NetworkError(UserError):
    """A backbone or its weights cannot be used."""


def pixels(images: ImageSet, size: int, cache_dir: str | None, workers: int = 4) -> torch.Tensor:
    """Every image of the set as (N, 1, size, size) uint8 (aspect kept, padded), cached per set and size."""
    path = cache_root(cache_dir) / "pixels" / f"{images.name}-{size}-v{PIXELS_VERSION}-{images.digest}.npy"
    if path.is_file():
        return torch.from_numpy(np.load(path, allow_pickle=False))
    with ThreadPoolExecutor(workers) as pool:
        loaded = list(
            tqdm(
                pool.map(lambda i: images.load(i, size), range(len(images))),
                total=len(images),
                desc=f"images at {size} px ({images.name})",
                unit="img",
                dynamic_ncols=True,
            )
        )
    array = np.stack(loaded)[:, None]
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, array)
    return torch.from_numpy(array)


class SmallCNN(torch.nn.Module):
    """Four strided convolutions and a linear head: trains in seconds on a CPU (smoke runs, phantoms)."""

    def __init__(self, outputs: int, width: int = 16):
        super().__init__()
        layers: list[torch.nn.Module] = []
        channels = 1
        for k in range(4):
            out = width * 2**k
            layers += [torch.nn.Conv2d(channels, out, 3, 2, 1), torch.nn.BatchNorm2d(out), torch.nn.ReLU()]
            channels = out
        self.features = torch.nn.Sequential(*layers, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        self.head = torch.nn.Linear(channels, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class Grayscale(torch.nn.Module):
    """uint8 or [0, 1] single-channel batches in, the backbone's outputs out (three channels when it wants them,
    centred as ImageNet weights expect)."""

    def __init__(self, net: torch.nn.Module, channels: int):
        super().__init__()
        self.net, self.channels = net, channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.float() / 255.0 if x.dtype == torch.uint8 else x) - 0.45
        x = x / 0.225
        return self.net(x.expand(-1, self.channels, -1, -1))


def backbone(arch: str, outputs: int, weights: str | None = None, allow_pickle: bool = False) -> torch.nn.Module:
    """A network from 1-channel images to `outputs` values: `cnn`, a torchvision name (`resnet18`,
    `densenet121`, or `torchvision:<arch>`) or `timm:<arch>`; random init, or a weights file whose head is left
    out (it has other outputs)."""
    library, _, name = arch.partition(":") if ":" in arch else ("torchvision", "", arch)
    if arch == "cnn":
        net: torch.nn.Module = SmallCNN(outputs)
        channels = 1
    elif library == "timm":
        if importlib.util.find_spec("timm") is None:
            raise NetworkError(f"{arch} needs timm (pip install timm)")
        import timm

        net, channels = timm.create_model(name, pretrained=False, num_classes=outputs), 3
    elif library == "torchvision":
        import torchvision

        try:
            net, channels = torchvision.models.get_model(name, weights=None, num_classes=outputs), 3
        except ValueError as exc:
            raise NetworkError(f"unknown network {arch!r}: use cnn, a torchvision name or timm:<arch>") from exc
    else:
        raise NetworkError(f"unknown network {arch!r}: use cnn, a torchvision name or timm:<arch>")
    if weights:
        _load_except_head(net, weights, allow_pickle)
    return Grayscale(net, channels)


def _load_except_head(net: torch.nn.Module, path: str, allow_pickle: bool) -> None:
    from .extractors import HEADS, ExtractorError, _state_dict

    try:
        state = _state_dict(Path(path), allow_pickle)
    except ExtractorError as exc:
        raise NetworkError(str(exc)) from exc
    own = net.state_dict()
    is_head = tuple(f"{h}." for h in HEADS)
    body = {k: v for k, v in state.items() if not (k.startswith(is_head) and own.get(k, v).shape != v.shape)}
    missing, unexpected = net.load_state_dict(body, strict=False)
    missing = [k for k in missing if not k.startswith(is_head)]
    if missing or unexpected:
        raise NetworkError(
            f"{path} does not fit this network: {len(missing)} weights missing (e.g. {', '.join(missing[:3]) or '-'})"
            f", {len(unexpected)} not in the network (e.g. {', '.join(unexpected[:3]) or '-'})"
        )


def shifted(batch: torch.Tensor, generator: torch.Generator, share: float = 0.04) -> torch.Tensor:
    """The batch moved by up to `share` of its side (zeros come in): positioning varies between films."""
    side = batch.shape[-1]
    most = max(1, int(side * share))
    dy, dx = (int(v) for v in torch.randint(-most, most + 1, (2,), generator=generator))
    padded = torch.nn.functional.pad(batch, (most, most, most, most))
    return padded[..., most + dy : most + dy + side, most + dx : most + dx + side]


def exposed(batch: torch.Tensor, generator: torch.Generator, spread: float = 0.2) -> torch.Tensor:
    """uint8 images as [0, 1] floats under another exposure: a gain and a gamma within 1 +- spread, per image
    (two studies of one patient are rarely exposed alike)."""
    gain, gamma = (1 + spread * (2 * torch.rand(2, len(batch), 1, 1, 1, generator=generator) - 1)).unbind(0)
    return ((batch.float() / 255.0) ** gamma * gain).clamp(0, 1)


@dataclass
class Fitted:
    net: torch.nn.Module
    log: dict[str, Any]  # what it was trained on and how: losses by step, seconds, whether it came from the cache


def fit(
    what: str,
    inputs: dict[str, Any],
    make: Callable[[], torch.nn.Module],
    loss: Callable[[torch.nn.Module, torch.Generator], torch.Tensor],
    steps: int,
    learning_rate: float,
    seed: int,
    cache_dir: str | None,
    device: str,
    log_every: int = 25,
) -> Fitted:
    """Train `make()` for `steps` AdamW steps of `loss(net, generator)` (which draws its own batch), or load the
    network trained before from the same `inputs` (a JSON-able description of everything that decides it: data
    digests, labels, settings). The log keeps the loss every `log_every` steps and the seconds it took."""
    decided_by = [TRAINING_VERSION, what, inputs, steps, learning_rate, seed]
    key = hashlib.sha256(json.dumps(decided_by, sort_keys=True).encode()).hexdigest()
    folder = cache_root(cache_dir) / "networks"
    weights, record = folder / f"{what}-{key[:16]}.safetensors", folder / f"{what}-{key[:16]}.json"
    torch.manual_seed(seed)
    net = make()
    if weights.is_file() and record.is_file():
        from safetensors.torch import load_file

        net.load_state_dict(load_file(weights))
        return Fitted(net.to(device).eval(), {**json.loads(record.read_text()), "cached": True})
    net.to(device).train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=learning_rate, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, learning_rate, total_steps=steps, pct_start=0.1)
    generator = torch.Generator().manual_seed(seed)
    losses: list[list[float]] = []
    start = time.perf_counter()
    for step in tqdm(range(steps), desc=f"training {what}", unit="step", dynamic_ncols=True, leave=False):
        value = loss(net, generator)
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()
        schedule.step()
        if step % log_every == 0 or step == steps - 1:
            losses.append([step, round(float(value.detach()), 5)])
    seconds = round(time.perf_counter() - start, 1)
    done = {"network": what, "steps": steps, "learning_rate": learning_rate, "seed": seed, "seconds": seconds}
    done["loss"] = losses
    folder.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    with atomic_path(weights) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, str(tmp))
    with atomic_path(record) as tmp:
        Path(tmp).write_text(json.dumps(done))
    log.info("trained %s in %.0f s (loss %.4f at the end)", what, seconds, losses[-1][1])
    return Fitted(net.eval(), {**done, "cached": False})


@torch.no_grad()
def outputs(net: torch.nn.Module, images: torch.Tensor, device: str, batch: int = 128) -> torch.Tensor:
    """The network's outputs for every image, in evaluation mode, on the CPU."""
    net.eval()
    return torch.cat([net(images[i : i + batch].to(device)).float().cpu() for i in range(0, len(images), batch)])


def file_identity(path: str | None) -> str | None:
    """A weights file for cache keys: its path, size and modification time (a replaced file is another input)."""
    if not path:
        return None
    from ..fileio import stat_digest

    return stat_digest([Path(path)])


def digest(*arrays: np.ndarray | torch.Tensor) -> str:
    """A short identity of labels or indices, for cache keys."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a.numpy() if isinstance(a, torch.Tensor) else a).tobytes())
    return h.hexdigest()[:16]


def overlap_warning(test: ImageSet, train: ImageSet) -> str | None:
    """A warning when the real images meant to be unseen include training images (the same files, or the same
    patients): the figures that rest on them would flatter the networks."""
    shared = {f.resolve() for f in test.files} & {f.resolve() for f in train.files}
    keys = {r.get("patient_key") for r in test.rows if r.get("patient_key")}
    patients = keys & {r.get("patient_key") for r in train.rows if r.get("patient_key")}
    if shared or patients:
        return (
            f"the real set shares {len(shared)} images and {len(patients)} patients with the training set: use "
            "images of other patients (a prepared dataset's test split) for figures that mean something"
        )
    return None
