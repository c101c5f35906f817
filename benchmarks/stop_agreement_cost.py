"""Time of the per-iteration stop agreement (`StepAgreement.poll`: a jitted reduction of 2 int32 per
device, whose result is read one call later), and of the blocking all-gather it replaced.

    python launch/local_multiprocess.py -n 2 -- benchmarks/stop_agreement_cost.py

Prints the median / p90 time of one poll on each process (after a warm-up).
"""
import time

from dinov2_jax.parallel.distributed import initialize_from_env

initialize_from_env()

import jax  # noqa: E402
import numpy as np  # noqa: E402

from dinov2_jax.train.stop_agreement import StepAgreement  # noqa: E402


def main(n=500):
    agree = StepAgreement()
    for _ in range(20):
        agree.poll(False, 0)
    agree.poll(False, -1)  # so that call i below returns the values of call i - 1
    times = []
    for i in range(n):
        t = time.perf_counter()
        stop, total = agree.poll(False, i)
        times.append(time.perf_counter() - t)
        assert not stop and total == (i - 1) * jax.process_count()  # the previous call's values
    from jax.experimental import multihost_utils

    blocking = []
    for i in range(n):
        t = time.perf_counter()
        multihost_utils.process_allgather(np.array([0, i], np.int32))
        blocking.append(time.perf_counter() - t)
    for name, ts in (("poll (read one call late)", times), ("blocking process_allgather", blocking)):
        t = np.asarray(ts) * 1e3
        print(f"process {jax.process_index()}/{jax.process_count()}: {name}: median {np.median(t):.3f} ms, "
              f"p90 {np.percentile(t, 90):.3f} ms over {n} calls", flush=True)


if __name__ == "__main__":
    main()
