"""RISE saliency maps for a teacher, its distilled student and the student trained alone.

RISE (Petsiuk, Das and Saenko, "RISE: Randomized Input Sampling for Explanation of Black-box
Models", BMVC 2018) treats a model as a black box: it draws N random binary masks on a coarse
s×s grid (each cell kept with probability p), upsamples each bilinearly to (s+1)·cell pixels
and crops it at a random shift of up to one cell, so mask edges fall anywhere. The saliency of
pixel λ for class c is the mask-weighted average of the class score over the masked images,
S_c(λ) = Σ_i f_c(I ⊙ M_i) · M_i(λ) / (N · p), with f_c the softmax probability of c.

Here the masks multiply the image in pixel space (masked pixels become black, as in the paper)
before normalisation; all three models see the same masks (one seeded generator), so their
maps differ only by the models; the class explained is the image's true label, the same for the
three models. The agreement of a student's map with the teacher's is Spearman's rank
correlation over the pixels of each image, averaged over the images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.analysis.runs import (
    find_baseline_run,
    find_run,
    load_student,
    load_teacher,
    load_test_data,
)

#: Columns of the PNG grid, after the input image.
ROLES = ("teacher", "KD student", "student alone")
#: Inches per grid cell and dots per inch: each cell of the PNG is CELL_PX pixels square.
CELL_INCHES = 2
DPI = 80
CELL_PX = CELL_INCHES * DPI


def rise_masks(
    count: int,
    image_size: tuple[int, int],
    *,
    grid: int = 7,
    keep: float = 0.5,
    generator: torch.Generator,
) -> Tensor:
    """RISE's random masks.

    Args:
        count: Number of masks N.
        image_size: (H, W) of the images.
        grid: Cells per side s of the binary grid.
        keep: Probability p that a cell is kept (1) rather than masked (0).
        generator: The source of all randomness (grid values and shifts).

    Returns:
        Float masks in [0, 1] of shape (count, 1, H, W).
    """
    if count < 1 or grid < 1 or not 0.0 < keep <= 1.0:
        raise ValueError(f"need count ≥ 1, grid ≥ 1, 0 < keep ≤ 1; got {count}, {grid}, {keep}")
    height, width = image_size
    cell_h, cell_w = math.ceil(height / grid), math.ceil(width / grid)
    cells = (torch.rand((count, 1, grid, grid), generator=generator) < keep).float()
    upsampled = F.interpolate(
        cells, size=((grid + 1) * cell_h, (grid + 1) * cell_w), mode="bilinear", align_corners=False
    )
    shift_y = torch.randint(0, cell_h, (count,), generator=generator)
    shift_x = torch.randint(0, cell_w, (count,), generator=generator)
    return torch.stack(
        [
            upsampled[i, :, y : y + height, x : x + width]
            for i, (y, x) in enumerate(zip(shift_y.tolist(), shift_x.tolist(), strict=True))
        ]
    )


@torch.no_grad()
def rise_saliency(
    model: nn.Module,
    image: Tensor,
    target: int,
    masks: Tensor,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    keep: float,
    batch_size: int = 250,
) -> Tensor:
    """The RISE saliency map of one normalised image (C, H, W) for class ``target``.

    Args:
        model: A classifier returning logits; run in eval mode.
        image: One normalised image, as the model's data pipeline yields it.
        target: The class explained.
        masks: Masks from :func:`rise_masks`, (N, 1, H, W).
        mean: The dataset's per-channel normalisation mean.
        std: The dataset's per-channel normalisation std.
        keep: The masks' keep probability p (the normaliser E[M]).
        batch_size: Masked images per forward pass.

    Returns:
        The (H, W) saliency map.
    """
    model.eval()
    mean_t = torch.tensor(mean, dtype=image.dtype).view(-1, 1, 1)
    std_t = torch.tensor(std, dtype=image.dtype).view(-1, 1, 1)
    pixels = image * std_t + mean_t
    total = torch.zeros(image.shape[1:], dtype=torch.float64)
    for start in range(0, len(masks), batch_size):
        chunk = masks[start : start + batch_size]
        masked = (pixels.unsqueeze(0) * chunk - mean_t) / std_t
        scores = model(masked).float().softmax(dim=1)[:, target]
        total += torch.einsum("n,nhw->hw", scores.double(), chunk[:, 0].double())
    return (total / (len(masks) * keep)).float()


def spearman(a: Tensor, b: Tensor) -> float:
    """Spearman's rank correlation of two maps over their pixels (NaN if one is constant)."""
    from scipy.stats import spearmanr

    if a.flatten().unique().numel() < 2 or b.flatten().unique().numel() < 2:
        return float("nan")
    return float(spearmanr(a.flatten().numpy(), b.flatten().numpy()).statistic)


@dataclass
class ExplainReport:
    """The saliency maps of one run's teacher and students and their agreement.

    Attributes:
        run_key: The distillation run.
        baseline_run_key: The run of the student trained alone.
        image_indices: Positions of the explained images in the test split.
        labels: Their true classes (the class explained).
        maps: Role → (N, H, W) saliency maps, roles as in :data:`ROLES`.
        correlations: Student role → per-image Spearman correlation with the teacher's map.
        png: The grid written, if any.
    """

    run_key: str
    baseline_run_key: str
    image_indices: list[int]
    labels: list[int]
    maps: dict[str, Tensor] = field(repr=False)
    correlations: dict[str, list[float]]
    png: Path | None = None

    def mean_correlation(self, role: str) -> float:
        values = [v for v in self.correlations[role] if not math.isnan(v)]
        return sum(values) / len(values) if values else float("nan")

    def as_json(self) -> dict[str, Any]:
        return {
            "run_key": self.run_key,
            "baseline_run_key": self.baseline_run_key,
            "image_indices": self.image_indices,
            "labels": self.labels,
            "spearman": self.correlations,
            "mean_spearman": {role: self.mean_correlation(role) for role in self.correlations},
            "png": str(self.png) if self.png else None,
        }

    def format(self) -> str:
        lines = [
            f"RISE saliency on {len(self.labels)} test images; Spearman rank correlation with "
            f"the teacher's maps (mean over images):"
        ]
        for role in self.correlations:
            lines.append(f"  {role:<14} {self.mean_correlation(role):+.3f}")
        if self.png:
            lines.append(f"grid: {self.png}")
        return "\n".join(lines)


def pick_images(
    split: Any, count: int, generator: torch.Generator
) -> tuple[list[int], Tensor, Tensor]:
    """``count`` distinct test images drawn with ``generator``: (indices, images, labels)."""
    total = len(split)
    if not 1 <= count <= total:
        raise ValueError(f"--images must be in 1..{total} (the test split's size), got {count}")
    chosen = sorted(torch.randperm(total, generator=generator)[:count].tolist())
    wanted = set(chosen)
    images, labels = {}, {}
    position = 0
    for x, y, _ in split.batches(
        256, shuffle=False, generator=None, augment=False, device=torch.device("cpu")
    ):
        for i in range(len(x)):
            if position + i in wanted:
                images[position + i], labels[position + i] = x[i], int(y[i])
        position += len(x)
    return (
        chosen,
        torch.stack([images[i] for i in chosen]),
        torch.tensor([labels[i] for i in chosen]),
    )


def explain_models(
    models: dict[str, nn.Module],
    images: Tensor,
    labels: Tensor,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    masks: int = 1000,
    grid: int = 7,
    keep: float = 0.5,
    generator: torch.Generator,
) -> dict[str, Tensor]:
    """Role → (N, H, W) RISE maps of each model on each image, all with the same masks."""
    height, width = images.shape[-2:]
    mask_set = rise_masks(masks, (height, width), grid=grid, keep=keep, generator=generator)
    return {
        role: torch.stack(
            [
                rise_saliency(model, image, int(label), mask_set, mean=mean, std=std, keep=keep)
                for image, label in zip(images, labels, strict=True)
            ]
        )
        for role, model in models.items()
    }


def save_grid(
    path: str | Path,
    images: Tensor,
    labels: Sequence[int],
    maps: dict[str, Tensor],
    correlations: dict[str, list[float]],
    *,
    mean: Sequence[float],
    std: Sequence[float],
) -> Path:
    """A PNG with one row per image: the image, then each role's map over it. Each cell is
    :data:`CELL_PX` pixels square."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    roles = list(maps)
    rows, cols = len(images), 1 + len(roles)
    fig, axes = plt.subplots(
        rows, cols, figsize=(cols * CELL_INCHES, rows * CELL_INCHES), dpi=DPI, squeeze=False
    )
    mean_t = torch.tensor(mean).view(-1, 1, 1)
    std_t = torch.tensor(std).view(-1, 1, 1)
    for r, image in enumerate(images):
        gray = (image * std_t + mean_t).mean(dim=0).clamp(0, 1).numpy()
        axes[r][0].imshow(gray, cmap="gray", vmin=0, vmax=1)
        axes[r][0].set_title(f"label {labels[r]}", fontsize=8)
        for c, role in enumerate(roles, start=1):
            axes[r][c].imshow(gray, cmap="gray", vmin=0, vmax=1)
            axes[r][c].imshow(maps[role][r].numpy(), cmap="jet", alpha=0.5)
            rho = correlations.get(role)
            title = role if rho is None else f"{role} ρ={rho[r]:+.2f}"
            axes[r][c].set_title(title, fontsize=8)
    for ax in axes.flat:
        ax.set_axis_off()
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=1 - 0.25 / rows, hspace=0.25)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    plt.close(fig)
    return path


def explain_run(
    key: str,
    *,
    images: int = 8,
    masks: int = 1000,
    grid: int = 7,
    keep: float = 0.5,
    seed: int = 0,
    out: str | Path | None = None,
    baseline_method: str = "ce",
    tracking_uri: str | None = None,
    experiment: str = "kdbench",
) -> ExplainReport:
    """RISE maps of a distillation run's teacher, its student and the same student trained
    alone (the ``baseline_method`` run with the same dataset, student, seed and recipe), on
    ``images`` test images; writes the PNG grid to ``out`` (default
    ``explain-<run key>.png``). The images and masks are drawn from one generator seeded with
    ``seed``.

    Raises:
        RunNotFoundError: No such run, the run has no teacher, or there is no baseline run.
    """
    run = find_run(key, tracking_uri=tracking_uri, experiment=experiment)
    teacher = load_teacher(run.config)
    baseline = find_baseline_run(run, baseline_method)
    data = load_test_data(run.config)
    generator = torch.Generator().manual_seed(seed)
    indices, batch, labels = pick_images(data.test, images, generator)
    models = {
        ROLES[0]: teacher,
        ROLES[1]: load_student(run),
        ROLES[2]: load_student(baseline),
    }
    info = data.info
    maps = explain_models(
        models,
        batch,
        labels,
        mean=info.mean,
        std=info.std,
        masks=masks,
        grid=grid,
        keep=keep,
        generator=generator,
    )
    correlations = {
        role: [spearman(maps[ROLES[0]][i], maps[role][i]) for i in range(len(indices))]
        for role in ROLES[1:]
    }
    png = save_grid(
        out or f"explain-{run.run_key}.png",
        batch,
        labels.tolist(),
        maps,
        correlations,
        mean=info.mean,
        std=info.std,
    )
    return ExplainReport(
        run_key=run.run_key,
        baseline_run_key=baseline.run_key,
        image_indices=indices,
        labels=labels.tolist(),
        maps=maps,
        correlations=correlations,
        png=png,
    )
