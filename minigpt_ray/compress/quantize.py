"""Weight quantization of the target layers: int8 weight-only and int8 dynamic-activation x int8-weight through
torchao's `quantize_`, and int4 group-wise weight-only.

torchao 0.18's int4 weight-only layouts need CUDA/XPU kernels or the `mslk` package and do not run on a CPU-only
torch, so int4 is implemented here: asymmetric 4-bit codes per group of `group_size` input weights, two codes
packed per byte, fp16 scale and offset per group (0.5 + 4/group_size bytes per weight), dequantized in forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from minigpt_ray.compress.layers import _set_submodule, conv1d_to_linear, target_layers


def torchao_config(method: str):
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig

    return {"int8-weight": Int8WeightOnlyConfig, "int8-dynamic": Int8DynamicActivationInt8WeightConfig}[method]()


class Int4GroupLinear(nn.Module):
    """y = x W^T + b with W stored as packed 4-bit codes and per-group fp16 scale/offset."""

    def __init__(self, in_features: int, out_features: int, group_size: int, bias: bool, dtype=torch.float32):
        super().__init__()
        if in_features % group_size or group_size % 2:
            raise ValueError(f"group_size: {group_size} must be even and divide in_features {in_features}")
        self.in_features, self.out_features, self.group_size, self.dtype = in_features, out_features, group_size, dtype
        groups = in_features // group_size
        self.register_buffer("packed", torch.zeros(out_features, in_features // 2, dtype=torch.uint8))
        self.register_buffer("scale", torch.ones(out_features, groups, dtype=torch.float16))
        self.register_buffer("offset", torch.zeros(out_features, groups, dtype=torch.float16))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype)) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int) -> Int4GroupLinear:
        q = cls(linear.in_features, linear.out_features, group_size, linear.bias is not None, linear.weight.dtype)
        w = linear.weight.detach().float().reshape(linear.out_features, -1, group_size)
        low, high = w.amin(dim=2), w.amax(dim=2)
        scale = ((high - low) / 15).clamp(min=1e-8)
        # fp16 rounding of scale/offset happens before the codes are chosen, so codes match what forward uses.
        scale, low = scale.half(), low.half()
        codes = torch.round((w - low.float()[..., None]) / scale.float()[..., None]).clamp(0, 15).to(torch.uint8)
        codes = codes.reshape(linear.out_features, -1)
        q.packed.copy_(codes[:, 0::2] | (codes[:, 1::2] << 4))
        q.scale.copy_(scale)
        q.offset.copy_(low)
        if linear.bias is not None:
            q.bias.data.copy_(linear.bias.detach())
        return q

    def dequantized_weight(self) -> torch.Tensor:
        codes = torch.stack([self.packed & 15, self.packed >> 4], dim=2).reshape(self.out_features, -1, self.group_size)
        w = codes.float() * self.scale.float()[..., None] + self.offset.float()[..., None]
        return w.reshape(self.out_features, self.in_features).to(self.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantized_weight().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, group_size={self.group_size}"


def quantize_model(model: nn.Module, method: str, group_size: int = 0) -> nn.Module:
    """Quantize the target layers in place (GPT-2 Conv1D layers become nn.Linear first)."""
    if method == "none":
        return model
    conv1d_to_linear(model)
    names = set(target_layers(model))
    if method == "int4-weight":
        for name in names:
            _set_submodule(model, name, Int4GroupLinear.from_linear(model.get_submodule(name), group_size))
        return model
    from torchao.quantization import quantize_

    quantize_(model, torchao_config(method), filter_fn=lambda module, fqn: fqn in names)
    return model


def int4_shells(model: nn.Module, group_size: int) -> nn.Module:
    """Replace target linears with empty Int4GroupLinear modules, ready for load_state_dict."""
    for name, linear in target_layers(model).items():
        shell = Int4GroupLinear(
            linear.in_features, linear.out_features, group_size, linear.bias is not None, linear.weight.dtype
        )
        _set_submodule(model, name, shell)
    return model
