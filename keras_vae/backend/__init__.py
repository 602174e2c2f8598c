"""How the fused kernel is called on each Keras backend.

One small module per framework: ``keras_vae.backend.jax`` (``jax.ffi``) and
``keras_vae.backend.torch`` (``torch.library``). Importing this package
imports neither; each module imports only its own framework.
"""
