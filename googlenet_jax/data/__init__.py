"""Fashion-MNIST as a tfds builder that needs no TensorFlow."""
