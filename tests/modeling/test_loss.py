"""The chunked fused loss gives HF's loss and gradients exactly, on Llama-style and GPT-2 models (no cluster)."""

import pytest
import torch
from helpers import tiny_llama_config
from transformers import AutoModelForCausalLM, GPT2Config, GPTNeoXConfig

from minigpt_ray.modeling import loss as loss_module
from minigpt_ray.modeling.loss import IGNORE_INDEX, fused_causal_lm_loss, supports_fused_loss, use_training_loss

CONFIGS = {
    "llama": tiny_llama_config(300),
    "gpt2": GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=300, n_positions=64, bos_token_id=0, eos_token_id=0),
}


def _model(kind: str):
    torch.manual_seed(0)
    # eval(): no dropout, so the two computations see the same network; gradients still flow.
    return AutoModelForCausalLM.from_config(CONFIGS[kind], attn_implementation="eager").eval()


def _loss_and_grads(model, input_ids, labels) -> tuple[float, dict]:
    model.zero_grad(set_to_none=True)
    loss = model(input_ids=input_ids, labels=labels).loss
    loss.backward()
    return loss.item(), {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_fused_loss_matches_hf_loss_and_gradients(kind, monkeypatch):
    monkeypatch.setattr(loss_module, "CHUNK_ELEMENTS", 300 * 16)  # 16 rows a chunk: 7 chunks, the last partial
    model = _model(kind)
    input_ids = torch.randint(0, 300, (3, 37))
    labels = input_ids.clone()
    labels[0, 5:9] = IGNORE_INDEX  # ignored targets are left out of the mean, as in HF
    reference_loss, reference_grads = _loss_and_grads(model, input_ids, labels)
    keys_before = list(model.state_dict())
    use_training_loss(model, fused=True, compile=False)
    fused_loss, fused_grads = _loss_and_grads(model, input_ids, labels)
    assert fused_loss == pytest.approx(reference_loss, rel=1e-6)
    for name, grad in reference_grads.items():
        assert torch.allclose(fused_grads[name], grad, rtol=1e-4, atol=1e-6), name
    assert list(model.state_dict()) == keys_before  # checkpoints keep the HF model's keys
    with torch.no_grad():  # evaluation and generation still get logits from the model's own forward
        assert model(input_ids=input_ids).logits.shape == (3, 37, 300)


def test_fused_loss_under_bf16_autocast_matches_hf_and_no_grad_computes_only_the_loss():
    model = _model("llama")
    input_ids = torch.randint(0, 300, (2, 64))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        reference = model(input_ids=input_ids, labels=input_ids).loss
        fused = fused_causal_lm_loss(model, input_ids, input_ids)
    assert fused.dtype == torch.float32
    assert fused.item() == pytest.approx(reference.item(), rel=2e-3)  # same bf16 matmuls, fp32 softmax
    with torch.no_grad():
        plain = fused_causal_lm_loss(model, input_ids, input_ids)
    assert plain.grad_fn is None and plain.item() == pytest.approx(_loss_and_grads(model, input_ids, input_ids)[0])


def test_architectures_outside_the_fused_set_keep_their_own_loss():
    neox = AutoModelForCausalLM.from_config(
        GPTNeoXConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=4, intermediate_size=128, vocab_size=300)
    )
    assert supports_fused_loss(_model("llama")) and supports_fused_loss(_model("gpt2"))
    assert not supports_fused_loss(neox)
    with pytest.raises(ValueError, match="gpt_neox"):
        use_training_loss(neox, fused=True, compile=False)
    forward = neox.forward
    use_training_loss(neox, fused=False, compile=False)
    assert neox.forward == forward  # nothing to route: the model is left as it was
