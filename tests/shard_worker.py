"""Subprocess of tests/test_sources.py: one of two JAX processes on localhost reading its shard.

    KERAS_BACKEND=jax python tests/shard_worker.py PROCESS_ID PORT FOLDER OUT.json

Sets up `--distribution=data_parallel` over two processes (keras.distribution.initialize), takes
the engine's input for a BatchStream on an image folder, and writes the first batches it yields
and every example index its source was asked for.
"""

import json
import sys

PROCESS_ID, PORT, FOLDER, OUT = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
BATCH, SEED, START, BATCHES = 8, 3, 5, 3

from keras_pd import distribute  # noqa: E402
from keras_pd.data import BatchStream, load_dataset  # noqa: E402


class Recording:
    """A source that remembers every index it reads."""

    def __init__(self, inner):
        self.inner, self.example_shape, self.seen = inner, inner.example_shape, []

    def __len__(self):
        return len(self.inner)

    def read(self, indices):
        self.seen.extend(int(i) for i in indices)
        return self.inner.read(indices)


engine = distribute.setup("data_parallel", f"localhost:{PORT}", 2, PROCESS_ID)
source = Recording(load_dataset(f"folder:{FOLDER}").source())
stream = BatchStream(source, None, BATCH, seed=SEED, start_step=START)
batches = engine.input(stream, workers=2)
it = iter(batches)
got = [next(it) for _ in range(BATCHES)]
with open(OUT, "w") as f:
    json.dump({"process_index": engine.process_index, "process_count": engine.process_count,
               "x": [b[0].tolist() for b in got], "y": [b[1].tolist() for b in got],
               "seen": sorted(set(source.seen))}, f)
