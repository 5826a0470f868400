from minigpt_ray.config import TrainJobConfig
from minigpt_ray.training.deepspeed_config import build_deepspeed_config


def test_dict_follows_the_typed_config():
    cfg = TrainJobConfig()
    t = cfg.train
    t.zero_stage, t.precision, t.micro_batch_size, t.grad_accum_steps = 3, "bf16", 4, 3
    t.lr, t.max_steps, t.warmup_steps, t.min_lr_ratio, t.grad_clip = 5e-4, 100, 10, 0.2, 0.5
    ds = build_deepspeed_config(cfg.validate().train, world_size=2)
    assert ds["train_batch_size"] == 4 * 3 * 2
    assert ds["train_micro_batch_size_per_gpu"] == 4 and ds["gradient_accumulation_steps"] == 3
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert ds["bf16"]["enabled"] is True and ds["fp16"]["enabled"] is False
    assert ds["gradient_clipping"] == 0.5
    assert ds["optimizer"]["params"]["lr"] == 5e-4 and ds["optimizer"]["params"]["torch_adam"] is True
    assert ds["optimizer"]["params"]["fused"] is True
    t.fused_optimizer = False
    assert build_deepspeed_config(t, world_size=2)["optimizer"]["params"]["fused"] is False
    sched = ds["scheduler"]["params"]
    assert (sched["total_num_steps"], sched["warmup_num_steps"], sched["cos_min_ratio"]) == (100, 10, 0.2)


def test_stage0_fp32_has_no_zero_extras():
    cfg = TrainJobConfig()
    cfg.train.zero_stage, cfg.train.precision = 0, "fp32"
    ds = build_deepspeed_config(cfg.validate().train, world_size=1)
    assert ds["zero_optimization"] == {"stage": 0}
    assert not ds["bf16"]["enabled"] and not ds["fp16"]["enabled"] and "torch_autocast" not in ds


def test_bf16_mixed_is_torch_autocast_on_fp32_weights():
    cfg = TrainJobConfig()
    cfg.train.precision = "bf16-mixed"
    ds = build_deepspeed_config(cfg.validate().train, world_size=2)
    assert ds["torch_autocast"] == {"enabled": True, "dtype": "bfloat16"}
    assert not ds["bf16"]["enabled"] and not ds["fp16"]["enabled"]


def test_no_warmup_starts_at_full_lr_in_deepspeeds_own_scheduler():
    import torch
    from deepspeed.runtime.lr_schedules import WarmupCosineLR

    cfg = TrainJobConfig()
    cfg.train.lr, cfg.train.max_steps, cfg.train.warmup_steps, cfg.train.min_lr_ratio = 1e-3, 50, 0, 0.1
    sched = build_deepspeed_config(cfg.validate().train, world_size=1)["scheduler"]["params"]
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    scheduler = WarmupCosineLR(optimizer, **sched)  # the same class DeepSpeed builds from the dict
    lrs = []
    for _ in range(50):
        lrs.append(scheduler.get_last_lr()[0])
        scheduler.step()
    # lrs[0] is before the scheduler's first step: DeepSpeed's WarmupCosineLR reports 0 there for any setting
    assert lrs[1] == 1e-3 and lrs[2] == 1e-3  # no ramp up from 0
    assert abs(lrs[-1] - 1e-4) < 2e-5 and all(a >= b for a, b in zip(lrs[1:], lrs[2:], strict=False))


def test_weight_decay_skips_norm_gains_and_biases():
    from transformers import GPT2Config, GPT2LMHeadModel

    from minigpt_ray.training.deepspeed_config import param_groups

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=50, n_positions=8))
    decay, no_decay = param_groups(model, 0.1)
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.1, 0.0)
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    named = {id(p): n for n, p in model.named_parameters()}  # tied lm_head/wte appear once
    assert {named[id(p)] for p in no_decay["params"]} == {
        n for n, p in model.named_parameters() if n.endswith(("bias", "ln_1.weight", "ln_2.weight", "ln_f.weight"))
    }
    assert len(decay["params"]) + len(no_decay["params"]) == len(named)
