"""`python -m benchmarks.fit_worker`: one Keras backend's end-to-end
candidates, driven over stdin/stdout by `benchmarks.end_to_end`.

The backend is fixed when Keras is imported (KERAS_BACKEND), so each backend
runs in a process of its own; the parent sends one command at a time, which
keeps the candidates of every backend interleaved in one run. Each command
and reply is a JSON line:
  {"cmd": "build", "K": 5, "steps": 30, "batch_size": 128}
      -> {"names": [...], "jit_compile": {name: bool}}
  {"cmd": "fit", "name": NAME}      -> {} once one `fit` call has returned
  {"cmd": "memory", "name": NAME}   -> {"peak_bytes": int or null}
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from benchmarks import fit_models  # noqa: E402

BACKEND = keras.backend.backend()


class Worker:
    def __init__(self):
        self.models = {}

    def build(self, K, steps, batch_size):
        self.steps, self.batch_size = steps, batch_size
        data = fit_models.images(batch_size, steps)
        if BACKEND == "tensorflow":
            import tensorflow as tf

            self.data = (
                tf.data.Dataset.from_tensor_slices(data)
                .batch(batch_size, drop_remainder=True)
                .repeat()
                .prefetch(tf.data.AUTOTUNE)
            )
            self.batch = next(iter(self.data))
        else:
            self.data, self.batch = data, data[:batch_size]
        self.models = {
            name: fit_models.build(kind, K, jit)
            for name, (kind, jit) in fit_models.BACKEND_CANDIDATES[BACKEND].items()
        }
        return {
            "names": list(self.models),
            "jit_compile": {n: bool(m.jit_compile) for n, m in self.models.items()},
        }

    def fit(self, name):
        kwargs = {} if BACKEND == "tensorflow" else {"batch_size": self.batch_size}
        self.models[name].fit(
            self.data, epochs=1, steps_per_epoch=self.steps, shuffle=False,
            verbose=0, **kwargs,
        )
        return {}

    def memory(self, name):
        """Peak allocator bytes of one `train_on_batch` past what was in use
        (TensorFlow's CPU allocator statistics; other backends report none)."""
        if BACKEND != "tensorflow":
            return {"peak_bytes": None}
        import tensorflow as tf

        model = self.models[name]
        model.train_on_batch(self.batch)
        tf.config.experimental.reset_memory_stats("CPU:0")
        before = tf.config.experimental.get_memory_info("CPU:0")["current"]
        model.train_on_batch(self.batch)
        peak = tf.config.experimental.get_memory_info("CPU:0")["peak"]
        return {"peak_bytes": peak - before}


def main():
    worker = Worker()
    protocol = sys.stdout
    sys.stdout = sys.stderr  # anything else printed stays off the protocol
    for line in sys.stdin:
        request = json.loads(line)
        cmd = request.pop("cmd")
        if cmd == "quit":
            break
        reply = getattr(worker, cmd)(**request)
        protocol.write(json.dumps(reply) + "\n")
        protocol.flush()


if __name__ == "__main__":
    main()
