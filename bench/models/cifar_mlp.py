"""Multi-layer perceptrons on flattened images, for MNIST-like data.

The zoo's ``mlp_large`` (two hidden layers of 1200 ReLU units) and ``mlp_small`` (two of 800)
have the sizes of the teacher and student nets of the MNIST experiment of Hinton et al. (2015,
"Distilling the Knowledge in a Neural Network"). They are built for the dataset's input: 3072
features on the 3x32x32 images of the CIFAR zoo, and the paper's 784 on the 1x28x28 of
``mnist_native`` and ``fashion_mnist_native``.

To fit the feature API of the convolutional models, each hidden layer is a stage whose output
is returned as an N×C×1×1 map (so its reduction is the input size); ``preact=True`` returns
the hidden layers before their ReLU.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import torch.nn.functional as F
from torch import Tensor, nn

from bench.models.cifar_base import StagedNet, stage_info


class Mlp(StagedNet):
    """Linear + ReLU hidden layers on the flattened input, then a linear classifier.

    Args:
        hidden: Widths of the hidden layers.
        num_classes: Classifier width.
        in_chans: Input channels.
        img_size: Input height and width (an int for square inputs); fixes the input width.
        drop_rate: Dropout before the classifier.
    """

    def __init__(
        self,
        hidden: Sequence[int] = (800, 800),
        num_classes: int = 100,
        in_chans: int = 3,
        img_size: int | Sequence[int] = 32,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        height, width = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.input_shape = (in_chans, height, width)
        widths = [in_chans * height * width, *hidden]
        self.layers = nn.ModuleList(nn.Linear(n_in, n_out) for n_in, n_out in pairwise(widths))
        self._init_head(
            widths[-1],
            num_classes,
            drop_rate,
            stage_info(
                list(hidden),
                [height] * len(hidden),
                [f"layers.{i}" for i in range(len(hidden))],
            ),
        )

    def _stage(self, index: int, x: Tensor, preact: bool) -> tuple[Tensor, Tensor]:
        if index == 0 and tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(
                f"Mlp expects inputs of shape N×{'×'.join(map(str, self.input_shape))}, got "
                f"{tuple(x.shape)}; build it with matching in_chans and img_size."
            )
        pre = self.layers[index](x.flatten(1))[:, :, None, None]
        out = F.relu(pre)
        return out, pre if preact else out
