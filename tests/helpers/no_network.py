"""Uses the package with every network call refused: import, build, fit,
save and load (safe_mode=True). Exits non-zero, naming the call, if anything
tries to open a connection or resolve a name."""

import socket
import sys


def refuse(*args, **kwargs):
    raise SystemExit(f"network access attempted: {args!r}")


socket.socket.connect = refuse
socket.socket.connect_ex = refuse
socket.create_connection = refuse
socket.getaddrinfo = refuse

import keras  # noqa: E402

import keras_vae  # noqa: E402
from helpers import tiny_vae  # noqa: E402

model = tiny_vae.build(num_samples=2, objective="iwae", gradient_estimator="dreg")
model.compile(keras.optimizers.Adam(1e-2))
model.fit(tiny_vae.data(), batch_size=8, epochs=1, verbose=0)
path = sys.argv[1]
model.save(path)
loaded = keras.models.load_model(path, safe_mode=True)
assert isinstance(loaded, keras_vae.VAE)
print("ok")
