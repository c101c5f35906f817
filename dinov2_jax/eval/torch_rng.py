"""torch's CPU `manual_seed` + `randperm`, reproduced bit-exactly in numpy.

The official evaluations draw their random subsets with torch: k-NN few-shot train subsets
(`dinov2/eval/knn.py` `filter_train`: `torch.manual_seed(try)`, then one `torch.randperm` per class) and
the log-regression hyper-parameter split (`dinov2/eval/log_regression.py`: `torch.manual_seed(0)`,
`torch.randperm(N)`, first N // 10 held out). Reproducing the generator makes our subsets the very same
images, so few-shot numbers are comparable with published ones without importing torch.

torch's CPU generator is a 32-bit Mersenne Twister seeded with the standard `init_genrand(seed)` (numpy's
legacy `RandomState` seeding), and CPU `randperm(n)` is a forward Fisher-Yates shuffle that swaps position
i with i + (next 32-bit draw % (n - i)). Checked against torch 2.13 in tests/eval/test_knn_fewshot.py.
"""
from __future__ import annotations

import numpy as np


class TorchCPUGenerator:
    """The state torch's `torch.manual_seed(seed)` leaves in the default CPU generator."""

    def __init__(self, seed: int):
        if not 0 <= int(seed) < 2**32:
            raise ValueError(f"seed must be in [0, 2**32), got {seed}")
        self._bits = np.random.MT19937(0)
        self._bits._legacy_seeding(int(seed))  # init_genrand(seed), what torch.manual_seed does

    def randperm(self, n: int) -> np.ndarray:
        """Same values as `torch.randperm(n)` drawn from this generator state; advances the state."""
        n = int(n)
        if n < 0:
            raise ValueError(f"randperm needs n >= 0, got {n}")
        perm = np.arange(n, dtype=np.int64)
        if n < 2:
            return perm
        draws = self._bits.random_raw(n - 1).astype(np.int64)  # uint32 values
        offsets = draws % (n - np.arange(n - 1, dtype=np.int64))
        for i, z in enumerate(offsets.tolist()):  # sequential swaps: each depends on the previous ones
            j = i + z
            perm[i], perm[j] = perm[j], perm[i]
        return perm


def torch_randperm(n: int, seed: int) -> np.ndarray:
    """`torch.manual_seed(seed); torch.randperm(n)` (CPU) as a numpy int64 array."""
    return TorchCPUGenerator(seed).randperm(n)
