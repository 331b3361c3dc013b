"""mnistops: the whole production life of a tiny MNIST classifier."""

__version__ = "0.1.0"
