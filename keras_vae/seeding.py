"""Seeds: the forms users pass, seed state that saves with a model, and
per-replica seeds.

One seed form is accepted everywhere a seed is taken (the op, `Sampling`,
`VAE`, its `sample`/`reconstruct`/`elbo`/`iwae_bound`/`log_likelihood`):

- `None`: a random seed;
- an int (Python or NumPy) `s`, which stands for the pair `[s, 0]`, as in
  `keras.random`;
- a pair of ints `[s0, s1]` (list, tuple or NumPy array).

Where a seed generator is made from it (`Sampling`, `VAE`), a
`keras.random.SeedGenerator` is taken too, and drawn from as is. The op also
takes an int32/int64 tensor of shape `[2]`.
"""

from __future__ import annotations

import numbers
from typing import Optional, Sequence, Union

import numpy as np

import keras

SeedLike = Union[None, int, Sequence[int], np.ndarray]

# What a seed must fit in: the op takes int64 seeds.
_INT64 = np.iinfo(np.int64)

__all__ = [
    "SeedLike",
    "SavesSeedState",
    "normalize_seed",
    "seed_generator",
    "seed_pair",
    "next_seed",
]


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def normalize_seed(seed: SeedLike, name: str = "seed"):
    """`seed` as `None`, a Python int or a tuple of two Python ints.

    Raises:
        ValueError: naming `name`, for anything else (floats, bools, strings,
            other lengths, values outside int64).
    """
    if seed is None:
        return None
    if _is_int(seed):
        values = (int(seed),)
    else:
        try:
            array = np.asarray(seed)
        except (TypeError, ValueError):
            array = None
        if (
            array is None
            or array.shape != (2,)
            or not np.issubdtype(array.dtype, np.integer)
        ):
            raise ValueError(
                f"{name} must be an int, a pair of ints or None, got "
                f"{seed!r}"
            )
        values = tuple(int(v) for v in array)
    for v in values:
        if not _INT64.min <= v <= _INT64.max:
            raise ValueError(f"{name} must fit in int64, got {seed!r}")
    return values[0] if len(values) == 1 else values


def seed_pair(seed: SeedLike, name: str = "seed") -> Optional[tuple]:
    """`seed` as the pair `(s0, s1)` the op takes: an int `s` is `(s, 0)`."""
    seed = normalize_seed(seed, name)
    if seed is None or isinstance(seed, tuple):
        return seed
    return (seed, 0)


def seed_generator(
    seed: SeedLike, name: Optional[str] = None
) -> keras.random.SeedGenerator:
    """A `keras.random.SeedGenerator` starting at `seed` (any seed form),
    or `seed` itself when it is one.

    Its first `next()` is `seed_pair(seed)`, then the second entry counts up.
    """
    if isinstance(seed, keras.random.SeedGenerator):
        return seed
    seed = normalize_seed(seed)
    if not isinstance(seed, tuple):
        return keras.random.SeedGenerator(seed, name=name)
    generator = keras.random.SeedGenerator(seed[0], name=name)
    generator.state.assign(
        keras.ops.convert_to_tensor(seed, dtype=generator.state.dtype)
    )
    return generator


def config_seed(seed: SeedLike):
    """`seed` in a JSON-friendly form for `get_config`: a
    `keras.random.SeedGenerator` is saved as its initial seed (the state it
    reached is saved with the weights, `SavesSeedState`)."""
    if isinstance(seed, keras.random.SeedGenerator):
        return seed.get_config()["seed"]
    seed = normalize_seed(seed)
    return list(seed) if isinstance(seed, tuple) else seed


def next_seed(generator: keras.random.SeedGenerator):
    """The generator's next `[2]` seed, distinct on each replica.

    Under `tf.distribute` every replica runs the same step with the same
    generator state; the replica id is added to the seed so that the
    replicas' examples do not share their noise.
    """
    seed = generator.next()
    if keras.backend.backend() != "tensorflow":
        return seed
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    if context is not None and context.num_replicas_in_sync > 1:
        replica = tf.cast(context.replica_id_in_sync_group, seed.dtype)
        seed = seed + tf.stack([replica, tf.zeros_like(replica)])
    return seed


# Added to a seed's first entry, times the layer's index, for the noise of
# the stochastic layers above the first (an odd constant far from the small
# seeds people choose, so layers' streams do not meet other steps').
_LAYER_SEED_STRIDE = 0x2545F491


def layer_seed(seed, layer: int):
    """The seed of stochastic layer `layer` (0, 1, ...) of a step whose seed
    is `seed`: `seed` itself for layer 0, so a model with one layer draws as
    `VAE` does; the first entry offset by `layer * 0x2545F491` (mod 2**32)
    above it.

    Args:
        seed: a seed form of `seed_pair`, or a `[2]` tensor (a step's seed).
        layer: the layer's index, >= 0.
    """
    if layer == 0:
        return seed
    offset = (layer * _LAYER_SEED_STRIDE) % 2**32
    if keras.ops.is_tensor(seed) or hasattr(seed, "dtype"):
        seed = keras.ops.convert_to_tensor(seed)
        if keras.backend.standardize_dtype(seed.dtype) == "int32":
            offset = (offset + 2**31) % 2**32 - 2**31  # as int32 wraps
        return seed + keras.ops.convert_to_tensor(
            np.array([offset, 0]), dtype=seed.dtype
        )
    s0, s1 = seed_pair(seed)
    return ((s0 + offset) % 2**31, s1)


class SavesSeedState:
    """Mixin: saves `self.seed_generator`'s state with the layer's variables.

    Keras saves a layer's weights but not the state of its
    `SeedGenerator`s; without it a loaded model would restart its random
    stream from the initial seed instead of continuing it. The state goes
    into the layer's own store under its own key, through the public
    `save_own_variables` / `load_own_variables`; a file saved without it
    loads too (the stream then restarts from the initial seed).
    """

    _SEED_STATE_KEY = "seed_generator_state"

    def save_own_variables(self, store):
        super().save_own_variables(store)
        store[self._SEED_STATE_KEY] = self.seed_generator.state

    def load_own_variables(self, store):
        weights = {
            key: store[key]
            for key in store.keys()
            if key != self._SEED_STATE_KEY
        }
        super().load_own_variables(weights)
        if self._SEED_STATE_KEY in store.keys():
            self.seed_generator.state.assign(store[self._SEED_STATE_KEY])
