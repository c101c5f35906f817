"""One process of the 2-process sharded-extraction test (tests/eval/test_sharded_extraction.py):

    python launch/local_multiprocess.py -n 2 -- tests/eval/dist_extract_worker.py OUT.npz

Each process reads its own half of demo:train / demo:val (`extract_features(distributed=True)`), the
features are gathered once; process 0 saves them and the k-NN results to OUT.npz.
"""
import json
import sys

from dinov2_jax.parallel.distributed import initialize_from_env

initialize_from_env()  # before any device use

import jax  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from test_sharded_extraction import extract_both  # noqa: E402

assert jax.process_count() == 2, jax.process_count()
(tr, ytr), (va, yva), res = extract_both(distributed=True)
if jax.process_index() == 0:
    np.savez(sys.argv[1], train=tr, train_labels=ytr, val=va, val_labels=yva, results=json.dumps(res))
print("WORKER_OK", jax.process_index(), flush=True)
