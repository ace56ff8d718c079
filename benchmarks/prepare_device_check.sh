#!/bin/bash
# Gathers what benchmarks/device_check.sh needs on a GPU machine with no network.
#
#   benchmarks/prepare_device_check.sh
#
# The GPU image (Python 3.12) has jax, flax, optax, orbax-checkpoint, chex, numpy,
# absl-py, etils, protobuf, pyarrow and matplotlib, but not tensorflow-datasets,
# array-record, ml-collections or tensorboardX, nor the Fashion-MNIST files. This
# puts Python 3.12 wheels of those (and of tfds's dependencies that the image
# lacks) in benchmarks/wheels/ and the four IDX files in benchmarks/fashion-mnist/;
# both are git-ignored and travel with the working tree when the run names them
# in `carry` (about 40 MB together). The wheels are requirements.txt's pins and,
# for tfds's dependencies, the versions those pins installed with; jax, flax,
# optax and orbax stay the image's own, whose versions summary.txt records.
set -euo pipefail
cd "$(dirname "$0")/.."
# The project's virtual environment's Python where there is one (PEP 668
# machines refuse packages in the system's), else python3.
python="${PYTHON:-$(if [ -x .venv/bin/python ]; then echo .venv/bin/python; else echo python3; fi)}"

source_dir="${SOURCE_DIR:-/usr/share/datasets/fashion-mnist}"
rm -rf benchmarks/wheels benchmarks/fashion-mnist
mkdir -p benchmarks/wheels benchmarks/fashion-mnist
"$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 \
  --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux1_x86_64 -d benchmarks/wheels \
  tensorflow-datasets==4.9.10 array-record==0.8.6 ml-collections==1.1.0 \
  tensorboardX==2.6.5 dm-tree==0.1.10 immutabledict==4.3.1 \
  simple-parsing==0.1.9 docstring-parser==0.18.0 tensorflow-metadata==1.21.0 \
  googleapis-common-protos==1.76.0 termcolor==3.3.0 toml==0.10.2 \
  importlib-resources==7.1.0
# promise is published only as source; its wheel is pure Python.
"$python" -m pip wheel -q --no-deps -w benchmarks/wheels promise==2.3
cp "$source_dir"/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz benchmarks/fashion-mnist/
du -sh benchmarks/wheels benchmarks/fashion-mnist
