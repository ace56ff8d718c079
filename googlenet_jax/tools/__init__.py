"""Tools around the core: compiles for TPU slices and GPUs, summaries, comparisons."""
