"""Models, their tokenizer, the training loss and the one perplexity protocol. Plain PyTorch/transformers, no Ray."""
