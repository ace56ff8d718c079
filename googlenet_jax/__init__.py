"""GoogLeNet / Inception in JAX and Flax, after Dive into Deep Learning's chapter."""
