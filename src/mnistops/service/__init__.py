"""The HTTP service: input decoding, MNIST-style preprocessing, inference and model hot-swapping."""
