"""Torch-free constants shared by training and the ONNX serving path."""

MEAN = 0.1307  # MNIST pixel mean on the [0,1] scale
STD = 0.3081  # MNIST pixel std on the [0,1] scale
NUM_CLASSES = 10
IMAGE_SIDE = 28
