"""The datasets kdbench ships. Importing this package registers them in ``bench.data.DATASETS``.

- :mod:`bench.datasets.digits`: scikit-learn's handwritten digits, embedded, offline.
- :mod:`bench.datasets.idx`: MNIST and Fashion-MNIST from idx files (plain or gzipped,
  torchvision's layout or the system package's), verified by content; padded to 3×32×32 or
  as published (``*_native``, 1×28×28).
- :mod:`bench.datasets.torchvision_files`: CIFAR-10/100, SVHN and STL-10 in their official
  on-disk formats, read by torchvision's own dataset classes.
- :mod:`bench.datasets.imagefolder`: any ``train/<class>/…`` + ``test/<class>/…`` image tree.
"""

from bench.datasets import digits, idx, imagefolder, torchvision_files

__all__ = ["digits", "idx", "imagefolder", "torchvision_files"]
