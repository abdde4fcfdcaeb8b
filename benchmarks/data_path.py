"""Data path: CE training images/s with kdbench's device-resident data (the split as one uint8
tensor on the training device, crop + flip + normalisation done there a batch at a time)
against the reference codebases' path (a torchvision DataLoader over PIL images with
RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor, Normalize, 2 workers), measured
side by side in one process on CIFAR-shaped synthetic data (50,000 x 3x32x32 by default).

Both sides train the same model with the same step (forward, cross-entropy, backward, SGD);
only where the batches come from differs. Each side is timed over the same number of steps
after a warm-up (which includes starting the loader's workers), in turn, several times; the
ratio of median images/s is printed, as is each path's data-only rate (no model).

    python benchmarks/data_path.py [--n 50000] [--steps 30] [--repeats 3] [--device auto]
"""

from __future__ import annotations

import argparse
import statistics
import time

import _synthetic as syn
import torch
import torch.nn.functional as F

from bench.config import Recipe
from bench.models import create_model
from bench.trial.context import make_optimizer


class PilCifar(torch.utils.data.Dataset):
    """CIFAR as torchvision's ``datasets.CIFAR100`` serves it: HWC uint8 → PIL → transforms."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        from torchvision import transforms

        self.images = images.permute(0, 2, 3, 1).contiguous().numpy()
        self.labels = labels.tolist()
        self.transform = transforms.Compose(
            [
                transforms.RandomCrop(32, padding=4),
                transforms.RandomHorizontalFlip(),
                transforms.ToTensor(),
                transforms.Normalize(syn.CIFAR_MEAN, syn.CIFAR_STD),
            ]
        )

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


def device_batches(split, batch_size: int, device: torch.device, generator: torch.Generator):
    while True:
        for x, y, _ in split.batches(
            batch_size,
            shuffle=True,
            generator=generator,
            augment=True,
            device=device,
            drop_last=True,
        ):
            yield x, y


def loader_batches(loader, device: torch.device):
    while True:
        for x, y in loader:
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def rate(batches, steps: int, batch_size: int, device: torch.device, step=None) -> float:
    """Images/s over ``steps`` batches (each trained on when ``step`` is given)."""
    syn.synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        x, y = next(batches)
        if step is not None:
            step(x, y)
    syn.synchronize(device)
    return steps * batch_size / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000, help="training images (default 50000)")
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    args = parser.parse_args()
    device = syn.pick_device(args.device)
    data = syn.synthetic_bundle(args.n, device)
    images, labels = syn.synthetic_images(args.n)
    loader = torch.utils.data.DataLoader(
        PilCifar(images, labels),
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=args.workers,
        pin_memory=device.type == "cuda",
        persistent_workers=args.workers > 0,
    )
    torch.manual_seed(0)
    model = create_model(args.model, 100).to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(list(model.parameters()), Recipe())

    def step(x, y):
        with torch.autocast("cuda", torch.bfloat16, enabled=device.type == "cuda"):
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    sources = {
        "device-resident": device_batches(
            data.train, args.batch_size, device, torch.Generator().manual_seed(0)
        ),
        f"DataLoader+PIL ({args.workers} workers)": loader_batches(loader, device),
    }
    for batches in sources.values():  # warm-up: workers started, kernels chosen
        rate(batches, args.warmup, args.batch_size, device, step)
    data_only = {name: rate(b, args.steps, args.batch_size, device) for name, b in sources.items()}
    training: dict[str, list[float]] = {name: [] for name in sources}
    for _ in range(args.repeats):
        for name, batches in sources.items():
            training[name].append(rate(batches, args.steps, args.batch_size, device, step))
    median = {name: statistics.median(values) for name, values in training.items()}

    print(
        f"CE {args.model}, synthetic CIFAR shape {args.n} x 3x32x32, batch {args.batch_size}, "
        f"{device}, {torch.get_num_threads()} threads, {args.steps} steps x {args.repeats}"
    )
    for name in sources:
        spread = ", ".join(f"{v:.0f}" for v in training[name])
        print(
            f"{name:28s} training {median[name]:8.0f} img/s ({spread}); data only "
            f"{data_only[name]:8.0f} img/s"
        )
    device_name, loader_name = list(sources)
    print(
        f"ratio device-resident / DataLoader, training: "
        f"{median[device_name] / median[loader_name]:.2f}; data only: "
        f"{data_only[device_name] / data_only[loader_name]:.2f}"
    )


if __name__ == "__main__":
    main()
