"""The trained adapter's lean layers compute what peft's LoRA layers compute, forward and backward."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, inject_adapter_in_model
from torch import nn

from cxrgen.train.methods.lora_layers import LoraLayer, adapter_state_dict, add_lora


class Holder(nn.Module):
    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


def pair(layer: nn.Module, dropout: float = 0.0) -> tuple[nn.Module, nn.Module]:
    """The same layer with peft's adapter and with ours, equal nonzero adapter weights, alpha 8 over rank 4."""
    torch.manual_seed(0)
    theirs, ours = Holder(layer), Holder(copy.deepcopy(layer))
    for model in (theirs, ours):
        model.requires_grad_(False)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules=["layer"])
    theirs = inject_adapter_in_model(config, theirs, adapter_name="cxrgen")
    assert add_lora(ours, ["layer"], "cxrgen", rank=4, alpha=8, dropout=dropout) == 1
    mine = dict(ours.named_parameters())
    for name, param in theirs.named_parameters():
        if "lora_" in name:
            param.data.normal_(0, 0.1)
            mine[name].data.copy_(param.data)
            param.requires_grad_(True)
            mine[name].requires_grad_(True)
    return theirs, ours


def forward_backward(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    x = x.clone().requires_grad_(True)
    out = model(x)
    (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    return out.detach(), {"x": x.grad, **grads}


CASES = {
    # tokens x channels: many tokens per weight (the merged product) and few (the low-rank path beside it)
    "linear, many tokens": (lambda: nn.Linear(16, 24), (2, 40, 16)),
    "linear, few tokens": (lambda: nn.Linear(64, 48, bias=False), (1, 3, 64)),
    "1x1 conv, many tokens": (lambda: nn.Conv2d(8, 12, 1), (2, 8, 6, 6)),
    "1x1 conv, few tokens": (lambda: nn.Conv2d(64, 32, 1), (1, 64, 2, 2)),
    "3x3 conv (plain path)": (lambda: nn.Conv2d(8, 12, 3, padding=1), (2, 8, 6, 6)),
}


@pytest.mark.parametrize("case", CASES)
def test_lean_layer_matches_peft(case):
    make, shape = CASES[case]
    theirs, ours = pair(make())
    x = torch.randn(shape)
    (want, want_grads), (got, got_grads) = forward_backward(theirs, x), forward_backward(ours, x)
    assert torch.allclose(got, want, atol=1e-5)
    assert want_grads.keys() == got_grads.keys() and len(want_grads) == 3  # x, A, B: the base stays frozen
    for name, grad in want_grads.items():
        assert torch.allclose(got_grads[name], grad, atol=1e-5), name


def test_channels_last_input_gives_the_same_result():
    theirs, ours = pair(nn.Conv2d(8, 12, 1))
    x = torch.randn(2, 8, 6, 6)
    (want, want_grads) = forward_backward(theirs, x)
    (got, got_grads) = forward_backward(ours, x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(got, want, atol=1e-5)
    assert all(torch.allclose(got_grads[n], g, atol=1e-5) for n, g in want_grads.items())


def test_dropout_and_peft_layers_take_the_plain_path():
    _, ours = pair(nn.Linear(16, 24), dropout=0.5)
    assert not ours.layer.fused
    stacked = inject_adapter_in_model(LoraConfig(r=2, target_modules=["layer"]), Holder(nn.Linear(16, 24)), "stack0")
    add_lora(stacked, ["layer"], "cxrgen", rank=4, alpha=4, dropout=0.0)
    assert isinstance(stacked.layer, LoraLayer) and not stacked.layer.fused  # wraps peft's layer
    assert torch.equal(stacked(torch.ones(1, 16)), stacked.layer.base_layer(torch.ones(1, 16)))  # B starts at 0


def test_bf16_autocast_runs_in_bf16_and_keeps_float32_gradients():
    _, ours = pair(nn.Linear(16, 24))
    x = torch.randn(2, 40, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ours(x)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert all(p.grad.dtype == torch.float32 for p in ours.parameters() if p.requires_grad)


def test_state_dict_has_peft_names_and_the_scale_folded():
    theirs, ours = pair(nn.Linear(16, 24))
    state = adapter_state_dict(ours)
    assert sorted(state) == ["layer.lora_A.weight", "layer.lora_B.weight"]
    assert torch.equal(state["layer.lora_B.weight"], ours.layer.up * 2)  # alpha 8 / rank 4


def test_targets_that_name_no_layer_or_another_kind():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    assert add_lora(model, ["nothing"], "cxrgen", 4, 4, 0.0) == 0
    with pytest.raises(TypeError, match="LayerNorm"):
        add_lora(model, ["1"], "cxrgen", 4, 4, 0.0)
