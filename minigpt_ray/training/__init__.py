"""Training as a Ray Train job: prepare (no Ray) → TorchTrainer with DeepSpeed ZeRO workers → HF model + metrics."""
