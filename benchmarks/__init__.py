"""The keras-vae benchmark harness: `python -m benchmarks.run [--quick]`.

It times the fused reparameterize-and-KL op against the same computation in
TensorFlow and TensorFlow Probability, the end-to-end `VAE.fit` throughput
against a plain Keras VAE, and the peak memory of a training step. Every
comparison interleaves its candidates in one run and reports medians.
"""
