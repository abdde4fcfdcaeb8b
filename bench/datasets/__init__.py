"""The datasets kdbench ships. Importing this package registers them in ``bench.data.DATASETS``.

- :mod:`bench.datasets.digits`: scikit-learn's handwritten digits, embedded, offline.
- :mod:`bench.datasets.torchvision_files`: MNIST, Fashion-MNIST, CIFAR-10/100, SVHN and STL-10
  in their official on-disk formats, read by torchvision's own dataset classes.
- :mod:`bench.datasets.imagefolder`: any ``train/<class>/…`` + ``test/<class>/…`` image tree.
"""

from bench.datasets import digits, imagefolder, torchvision_files

__all__ = ["digits", "imagefolder", "torchvision_files"]
