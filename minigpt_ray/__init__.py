"""minigpt_ray: train, fine-tune, compress and serve a small GPT as distributed Ray jobs."""

import logging as _logging

# Importing transformers imports torchao, whose import logs version-skew warnings (pytree Enum registration,
# CUDA-only kernels it cannot load on a CPU machine) on every process start. They are not actionable and bury
# the one-line errors and progress lines users read, so only errors from these loggers are shown.
for _name in ("torch.utils._pytree", "torchao", "torchao.kernel.intmm"):
    _logging.getLogger(_name).setLevel(_logging.ERROR)

__version__ = "0.1.0"
