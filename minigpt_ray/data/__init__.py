"""Text sources → documents → token blocks. Plain Python/NumPy, no Ray: the trainer wraps the blocks in Ray
Datasets."""
