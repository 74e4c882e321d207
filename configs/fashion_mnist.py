"""Class-conditional Fashion-MNIST (28x28) from TFDS; same recipe as configs/mnist.py.

  python launch.py --config configs/fashion_mnist.py --workdir runs/fmnist
  python launch.py --config configs/fashion_mnist.py:cpu --workdir runs/fmnist_cpu \\
      --config.data.source=array_record --config.data.path=data/fashion_mnist

(see experiments/fashion_mnist_cpu/ for the recorded CPU run on the idx files in
../shared/assets converted with diffjax.data.convert).
"""

from configs import mnist


def get_config(arg=None):
  c = mnist.get_config()
  c.experiment = "fashion_mnist"
  c.data.name = "fashion_mnist"
  return mnist.apply_arg(c, arg)
