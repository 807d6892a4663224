"""The trained LoRA adapter's layers: lean where peft's are general.

A peft LoRA layer computes base(x) + B(A(dropout(x))) * scale on every call, after looking up the active
adapters, their dropouts and scalings: two extra passes over the layer's output (the scaling and the sum) and, in
the backward pass, two more over its input and output. Here, a plain Linear or 1x1 Conv2d with a dropout-free
adapter is one autograd node (`_Lora`): where the layer sees many tokens it runs one product with the merged
weight W + scale * B @ A (rebuilt in the backward pass rather than kept), elsewhere the low-rank path is added in
place; the adapter's gradients come from thin products with its rank.

Anything else (dropout, a k x k convolution, a layer that already carries peft's frozen stacked adapters) takes
the plain sum, with standard autograd. Parameters have peft's names and shapes (`<module>.lora_A.<adapter>.weight`,
`lora_B`), so checkpoints, exports and `get_peft_model_state_dict`-style dictionaries are the same as before.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype autocast would run a linear layer in, or the input's."""
    kind = x.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype


def _token_rows(t: torch.Tensor) -> torch.Tensor | None:
    """A channels-last 4-D tensor as a (B, H, W, C) view, whose last dimension is the channels; else None."""
    if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return t.permute(0, 2, 3, 1)
    return None


def _apply(matrix: torch.Tensor, t: torch.Tensor, conv: bool) -> torch.Tensor:
    """`matrix` (out, in) applied to every token of t: the last dimension of a linear layer's input, dimension 1
    of a 1x1 convolution's (as products over views of t in either memory format, never copies)."""
    rows = _token_rows(t) if conv else t
    if rows is not None:
        out = rows @ matrix.t()
        return out.permute(0, 3, 1, 2) if conv else out
    flat = t.reshape(t.shape[0], t.shape[1], -1)
    return (matrix @ flat).reshape(t.shape[0], matrix.shape[0], *t.shape[2:])


def _outer(g: torch.Tensor, t: torch.Tensor, conv: bool) -> torch.Tensor:
    """The sum over tokens of g (x) t: a (g channels, t channels) matrix."""
    if conv and _token_rows(g) is None:
        gf, tf = g.reshape(g.shape[0], g.shape[1], -1), t.reshape(t.shape[0], t.shape[1], -1)
        return (gf @ tf.transpose(1, 2)).sum(0)
    if conv:
        g, t = g.permute(0, 2, 3, 1), t.permute(0, 2, 3, 1)
    return g.reshape(-1, g.shape[-1]).t() @ t.reshape(-1, t.shape[-1])


def _merged(weight: torch.Tensor, down: torch.Tensor, up: torch.Tensor, scale: float) -> torch.Tensor:
    """W + scale * B @ A, a (out, in) matrix."""
    return torch.addmm(weight.reshape(weight.shape[0], -1), up, down, alpha=scale)


class _Lora(torch.autograd.Function):
    """y = x W^T + b + scale * x A^T B^T over the channels of x, with gradients for x, A and B only (W and b are
    frozen). With many tokens per weight the product runs once, with W + scale * B A; with few (deep, narrow
    layers), the low-rank path runs beside W, added in place: whichever moves less memory."""

    @staticmethod
    def forward(ctx: Any, x: Any, weight: Any, bias: Any, down: Any, up: Any, scale: float, conv: bool) -> Any:
        dtype = _compute_dtype(x)
        w = weight.reshape(weight.shape[0], -1).to(dtype)
        a = down.reshape(down.shape[0], -1).to(dtype)  # (r, in)
        b = up.reshape(up.shape[0], -1).to(dtype)  # (out, r)
        tokens = x.numel() // w.shape[1]
        merge = tokens * (w.shape[0] + w.shape[1]) >= w.shape[0] * w.shape[1]
        with torch.autocast(x.device.type, enabled=False):
            xc = x.to(dtype)
            y = _apply(_merged(w, a, b, scale) if merge else w, xc, conv)
            if not merge:
                y.add_(_apply(b, _apply(a, xc, conv), conv), alpha=scale)
            if bias is not None:
                y.add_(bias.to(dtype).reshape(-1, *([1] * (y.dim() - 2))) if conv else bias.to(dtype))
        ctx.save_for_backward(x, w, a, b)
        ctx.scale, ctx.conv, ctx.merge = scale, conv, merge
        ctx.like = (down.shape, down.dtype, up.shape, up.dtype)
        return y

    @staticmethod
    def backward(ctx: Any, grad: Any) -> Any:
        x, w, a, b = ctx.saved_tensors
        s, conv = ctx.scale, ctx.conv
        with torch.autocast(x.device.type, enabled=False):
            g, xc = grad.to(w.dtype), x.to(w.dtype)
            gb = _apply(b.t(), g, conv)  # gradient at the rank-r bottleneck
            grad_up = _outer(g, _apply(a, xc, conv), conv).mul_(s)
            grad_down = _outer(gb, xc, conv).mul_(s)
            grad_x = None
            if ctx.needs_input_grad[0]:
                if ctx.merge:
                    grad_x = _apply(_merged(w, a, b, s).t(), g, conv)
                else:
                    grad_x = _apply(w.t(), g, conv).add_(_apply(a.t(), gb, conv), alpha=s)
                grad_x = grad_x.to(x.dtype)
        down_shape, down_dtype, up_shape, up_dtype = ctx.like
        grad_down = grad_down.reshape(down_shape).to(down_dtype)
        return grad_x, None, None, grad_down, grad_up.reshape(up_shape).to(up_dtype), None, None


class LoraLayer(nn.Module):
    """A module with one trainable LoRA adapter named `adapter` beside its frozen `base_layer`."""

    def __init__(self, base: nn.Module, adapter: str, rank: int, alpha: float, dropout: float) -> None:
        super().__init__()
        self.base_layer = base
        self.adapter = adapter
        self.scale = alpha / rank
        core = base.base_layer if hasattr(base, "base_layer") else base  # under peft's frozen stacked adapters
        if isinstance(core, nn.Linear):
            down: nn.Module = nn.Linear(core.in_features, rank, bias=False)
            up: nn.Module = nn.Linear(rank, core.out_features, bias=False)
        elif isinstance(core, nn.Conv2d) and core.groups == 1:
            shape = (core.kernel_size, core.stride, core.padding, core.dilation)
            down = nn.Conv2d(core.in_channels, rank, *shape, bias=False)
            up = nn.Conv2d(rank, core.out_channels, 1, bias=False)
        else:
            raise TypeError(f"LoRA adapts Linear and ungrouped Conv2d layers, not {type(core).__name__}")
        nn.init.normal_(down.weight, std=1 / rank)  # peft's "gaussian" start: A random, B zero, so y = base(x)
        nn.init.zeros_(up.weight)
        self.lora_A = nn.ModuleDict({adapter: down})
        self.lora_B = nn.ModuleDict({adapter: up})
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        pointwise = isinstance(core, nn.Conv2d) and core.kernel_size == (1, 1) and core.stride == (1, 1)
        pointwise = pointwise and core.padding == (0, 0) and core.dilation == (1, 1)
        # one node needs the plain layer itself, and no dropout between x and the adapter
        self.fused = (base is core) and not dropout and (isinstance(core, nn.Linear) or pointwise)
        self.conv = isinstance(core, nn.Conv2d)

    @property
    def down(self) -> nn.Parameter:
        return self.lora_A[self.adapter].weight

    @property
    def up(self) -> nn.Parameter:
        return self.lora_B[self.adapter].weight

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        base = self.base_layer
        if self.fused and not args and not kwargs:
            return _Lora.apply(x, base.weight, base.bias, self.down, self.up, self.scale, self.conv)
        result = base(x, *args, **kwargs)
        lora = self.lora_B[self.adapter](self.lora_A[self.adapter](self.dropout(x).to(self.down.dtype)))
        return result + (lora * self.scale).to(result.dtype)


def matches(name: str, targets: list[str]) -> bool:
    """peft's rule for a list of target names: the module's full name, or its last dotted parts."""
    return any(name == t or name.endswith(f".{t}") for t in targets)


def add_lora(model: nn.Module, targets: list[str], adapter: str, rank: int, alpha: float, dropout: float) -> int:
    """Wrap every module named by `targets` in a LoraLayer; the number wrapped."""
    chosen = [
        (name, module)
        for name, module in model.named_modules()
        if matches(name, targets) and not name.endswith(".base_layer") and not isinstance(module, LoraLayer)
    ]
    for name, module in chosen:
        try:
            layer = LoraLayer(module, adapter, rank, alpha, dropout)
        except TypeError as exc:
            raise TypeError(f"{name}: {exc}") from exc
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, layer)
    return len(chosen)


def lora_layers(model: nn.Module) -> Iterator[tuple[str, LoraLayer]]:
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            yield name, module


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter as `get_peft_model_state_dict` gives it (`<module>.lora_A.weight`, `lora_B`), with the scale
    folded into B."""
    state = {}
    for name, layer in lora_layers(model):
        state[f"{name}.lora_A.weight"] = layer.down.detach()
        up = layer.up.detach()
        state[f"{name}.lora_B.weight"] = up * layer.scale if layer.scale != 1 else up
    return state
