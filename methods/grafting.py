"""Filter grafting: networks trained in parallel exchange weights, layer by layer, weighted by
the information (entropy) of each layer.

Paper: Fanxu Meng, Hao Cheng, Ke Li, Zhixin Xu, Rongrong Ji, Xing Sun, Guangming Lu, "Filter
Grafting for Deep Neural Networks", CVPR 2020. https://arxiv.org/abs/2001.05868
Reference code: https://github.com/fxmeng/filter-grafting (``grafting_cifar/grafting.py``,
``grafting_cifar/grafting.sh``).

The student and ``peers - 1`` networks of its architecture train side by side on the same
batches, each with cross-entropy. At the end of every epoch each network i grafts the previous
one in a ring (network i-1; the first takes from the last): for each convolution weight W,

    alpha = (a / pi) * arctan(c * (H(W_i) - H(W_{i-1}))) + 0.5      (rounded to 0.01)
    W_i <- alpha * W_i + (1 - alpha) * W_{i-1}

where H is the entropy of a 10-bin histogram of the layer's weights (bins of equal width
between their minimum and maximum). As in the reference code, every other floating-point entry
of the state (BatchNorm weights and running statistics, the classifier) is grafted with the
coefficient of the nearest preceding convolution, and all networks graft from the others'
weights as they were before this exchange. The optimizers' momentum buffers are left as they
are. The student (the last network of the ring, as network ``num`` in the reference scripts) is
the one evaluated; the peers are submodules of the method with their own optimizers built from
the trial's recipe, at the learning rate ``lr * (1 + cos(pi * (num - i) / num)) / 2`` for
network i (the reference's ``--difflr`` diversity: with two networks the peer gets half the
student's rate), following the trial's schedule.

Paper vs code:
- The reference code's histogram drops the maximum weight from the last bin (a half-open bin);
  kdbench's last bin is closed.
- The default a = 0.4, c = 500 and the rounding are the reference code's; a = 1 spans the full
  range alpha in [0, 1] (``round_coefficient=False`` keeps alpha unrounded).
- The reference networks train in separate processes with their own data order; here they share
  the student's batches, so their diversity comes from the initialisation and learning rates.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Annotated, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.api import Batch, Method, ModelInfo, Range, TaskInfo, TrainContext, register_method

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def weight_entropy(weight: Tensor, bins: int = 10) -> float:
    """Entropy (nats) of the histogram of ``weight``'s values in ``bins`` equal-width bins
    between their minimum and maximum; 0 for a constant tensor."""
    values = weight.detach().float().flatten()
    low, high = values.min(), values.max()
    if not bool(high > low):
        return 0.0
    index = ((values - low) / (high - low) * bins).floor().clamp_(max=bins - 1).long()
    probs = torch.bincount(index, minlength=bins).float() / values.numel()
    return float(-torch.special.xlogy(probs, probs).sum())


def grafting_coefficient(
    own_entropy: float, other_entropy: float, a: float = 0.4, c: float = 500.0, rounded: bool = True
) -> float:
    """The weight a network keeps of its own layer: ``(a/pi) arctan(c (H_own - H_other)) + 0.5``."""
    alpha = a / math.pi * math.atan(c * (own_entropy - other_entropy)) + 0.5
    return round(alpha, 2) if rounded else alpha


def conv_weight_keys(model: nn.Module) -> set[str]:
    """State-dict keys of the convolution weights of ``model``."""
    return {
        f"{name}.weight" if name else "weight"
        for name, module in model.named_modules()
        if isinstance(module, _CONV)
    }


def graft_state(
    own: dict[str, Tensor],
    other: dict[str, Tensor],
    conv_keys: set[str],
    *,
    a: float = 0.4,
    c: float = 500.0,
    bins: int = 10,
    rounded: bool = True,
) -> dict[str, Tensor]:
    """The grafted state of one network: ``alpha * own + (1 - alpha) * other`` entry by entry,
    alpha from each convolution's entropies, carried to the entries that follow it; entries
    before the first convolution and non-floating entries stay as they are."""
    grafted, alpha = {}, None
    for key, mine in own.items():
        if key in conv_keys:
            alpha = grafting_coefficient(
                weight_entropy(mine, bins), weight_entropy(other[key], bins), a, c, rounded
            )
        if alpha is None or not mine.is_floating_point():
            grafted[key] = mine.clone()
        else:
            grafted[key] = alpha * mine + (1.0 - alpha) * other[key]
    return grafted


@register_method("grafting")
class FilterGrafting(Method):
    """Filter grafting between the student and peer networks of its architecture.

    Attributes:
        peers: Networks in the ring, the student included (reference scripts: 2).
        a: Scale of the coefficient's arctan (reference code: 0.4).
        c: Sharpness of the coefficient in the entropy difference (reference code: 500).
        bins: Histogram bins of the entropy (reference code: 10).
        round_coefficient: Round the coefficient to two decimals (reference code).
        lr_spread: Give network i the learning-rate factor ``(1 + cos(pi (num - i)/num))/2``
            (reference code's default ``--difflr``); off: every network at the trial's rate.
    """

    knowledge = "parameter"
    mode = "online"
    uses_teacher = False
    owns_ce = True
    version = 1

    class Params(Method.Params):
        peers: Annotated[int, Range(ge=2)] = 2
        a: Annotated[float, Range(ge=0, le=1)] = 0.4
        c: Annotated[float, Range(ge=0)] = 500.0
        bins: Annotated[int, Range(ge=2)] = 10
        round_coefficient: bool = True
        lr_spread: bool = True

    search_space: ClassVar[dict[str, list]] = {"c": [100.0, 500.0, 1000.0]}

    def supports(
        self, student: ModelInfo, teacher: ModelInfo | None, task: TaskInfo
    ) -> tuple[bool, str]:
        if self.params.peers < 2:
            return False, f"peers={self.params.peers}: grafting needs at least 2 networks"
        return True, ""

    def setup(self, student: ModelInfo, teacher: ModelInfo | None, task: TaskInfo) -> None:
        self.peer_models = nn.ModuleList()
        self.optimizers: list[torch.optim.Optimizer] = []
        self.lr_factors: list[float] = []
        self.steps_per_epoch = max(1, task.steps_per_epoch)

    def before_training(self, ctx: TrainContext) -> None:
        num = self.params.peers
        for i in range(1, num):
            model, _ = ctx.create_model(ctx.student_info.name)
            self.peer_models.append(model)
            self.optimizers.append(ctx.make_optimizer(model.parameters()))
            spread = (1 + math.cos(math.pi * (num - i) / num)) / 2
            self.lr_factors.append(spread if self.params.lr_spread else 1.0)
        self._restore_optimizers()

    def get_extra_state(self) -> dict:
        return {"optimizers": [o.state_dict() for o in self.optimizers]}

    def set_extra_state(self, state: dict) -> None:
        # a method rebuilt for resuming gets its optimizers in before_training, after this
        self._pending_optimizer_states = list(state.get("optimizers", []))
        self._restore_optimizers()

    def _restore_optimizers(self) -> None:
        pending = getattr(self, "_pending_optimizer_states", [])
        if pending and len(pending) == len(self.optimizers):
            for optimizer, saved in zip(self.optimizers, pending, strict=True):
                optimizer.load_state_dict(saved)
            self._pending_optimizer_states = []

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        return iter(())  # peers step with their own optimizers

    def train_step(self, ctx: TrainContext, batch: Batch) -> dict[str, Tensor]:
        base = ctx.scheduled_lr(batch)
        for model, optimizer, factor in zip(
            self.peer_models, self.optimizers, self.lr_factors, strict=True
        ):
            loss = F.cross_entropy(ctx.forward(model, batch.x).logits.float(), batch.y)
            for group in optimizer.param_groups:
                group["lr"] = base * factor
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        student = ctx.forward_student(batch.x).logits
        return {"ce": F.cross_entropy(student.float(), batch.y)}

    def after_step(self, ctx: TrainContext, batch: Batch) -> None:
        if (batch.step + 1) % self.steps_per_epoch == 0:
            self.graft(ctx.student)

    @torch.no_grad()
    def graft(self, student: nn.Module) -> None:
        """One grafting round over the ring (peers in order, then the student)."""
        ring = [*self.peer_models, student]
        states = [m.state_dict() for m in ring]
        snapshot = [{k: v.clone() for k, v in s.items()} for s in states]
        conv_keys = conv_weight_keys(student)
        p = self.params
        for i, model in enumerate(ring):
            grafted = graft_state(
                snapshot[i],
                snapshot[i - 1],
                conv_keys,
                a=p.a,
                c=p.c,
                bins=p.bins,
                rounded=p.round_coefficient,
            )
            model.load_state_dict(grafted)
