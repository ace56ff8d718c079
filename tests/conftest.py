"""Every test process sees 8 CPU devices, as a TPU host would."""

import chex

chex.set_n_cpu_devices(8)
