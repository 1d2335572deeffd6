"""MNIST's images and classes: what the data, the model and the augmentation agree on."""

IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10
TRAIN_IMAGES = 60_000  # MNIST's training set, before a validation split
