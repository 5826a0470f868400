"""Which layers compression touches, and one [out, in] view of their weights for nn.Linear and GPT-2's Conv1D.

HF GPT-2 stores its projections as `Conv1D` (weight [in, out]); Llama-style models use `nn.Linear` (weight
[out, in]). Pruning works on a transposed view so one code path covers both; quantization first converts Conv1D to
nn.Linear because torchao only rewrites nn.Linear.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D


def target_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The projections inside the transformer blocks (attention and MLP), by qualified name.

    Embeddings and the LM head stay dense: the head is tied to the input embedding in our presets and GPT-2, and
    it is the layer small models are most sensitive to.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, (nn.Linear, Conv1D)) and module is not head
    }


def weight_rows(module: nn.Module) -> torch.Tensor:
    """The weight as [out_features, in_features]: a view, so in-place edits change the layer."""
    return module.weight.t() if isinstance(module, Conv1D) else module.weight


def in_features(module: nn.Module) -> int:
    return weight_rows(module).shape[1]


def conv1d_to_linear(model: nn.Module) -> nn.Module:
    """Replace every Conv1D with the equivalent nn.Linear (same outputs), in place."""
    for name, module in list(model.named_modules()):
        if isinstance(module, Conv1D):
            linear = nn.Linear(
                module.weight.shape[0],
                module.weight.shape[1],
                bias=module.bias is not None,
                dtype=module.weight.dtype,
                device=module.weight.device,
            )
            with torch.no_grad():
                linear.weight.copy_(module.weight.t())
                if module.bias is not None:
                    linear.bias.copy_(module.bias)
            _set_submodule(model, name, linear)
    return model


def has_conv1d(model: nn.Module) -> bool:
    return any(isinstance(m, Conv1D) for m in model.modules())


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def collect_input_norms(
    model: nn.Module, modules: dict[str, nn.Module], blocks: torch.Tensor, batch_size: int = 8
) -> dict[str, torch.Tensor]:
    """L2 norm over all calibration tokens of each input feature of each module (Wanda's ||X_j||)."""
    sums = {name: None for name in modules}

    def hook_for(name):
        def hook(_module, args):
            x = args[0].detach().float().reshape(-1, args[0].shape[-1])
            sq = (x * x).sum(dim=0)
            sums[name] = sq if sums[name] is None else sums[name] + sq

        return hook

    handles = [module.register_forward_pre_hook(hook_for(name)) for name, module in modules.items()]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(blocks), batch_size):
                model(input_ids=blocks[start : start + batch_size])
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return {name: total.sqrt() for name, total in sums.items()}
