"""Contrastive representation distillation (CRD).

Paper: Yonglong Tian, Dilip Krishnan, Phillip Isola, "Contrastive Representation
Distillation", ICLR 2020. https://arxiv.org/abs/1910.10699
Reference code: https://github.com/HobbitLong/RepDistiller (``crd/criterion.py``,
``crd/memory.py``, ``dataset/cifar100.py``: ``CIFAR100InstanceSample``, ``train_student.py``).

Both embeddings pass through trainable linear heads onto the unit sphere (width 128). Two
memory banks (buffers, ``num_train`` × 128, one per network) hold a momentum average of every
training sample's embedding, indexed by ``batch.index``. For each sample the positive is its
own slot and the negatives are K other slots. With a student anchor v_s, the scores against
the teacher's memory are P = exp(⟨m_t, v_s⟩/τ)/Z, Z fixed on the first batch as
mean(exp(score/τ))·num_train; the NCE loss (the paper's Eq. 18) is::

    −(1/B) Σ_b [ log P_pos/(P_pos + K/N + 1e-7) + Σ_neg log (K/N)/(P_neg + K/N + 1e-7) ]

and symmetrically with the teacher as anchor against the student's memory; the two are
added, times β. After the loss the positives' slots are updated without gradients:
m ← normalise(μ·m + (1 − μ)·v), μ = 0.5. Scores and the loss are computed in fp32 in log
space.

Defaults (paper and reference code): β = 0.8, τ = 0.07, μ = 0.5, K = 16384, width 128.

Paper vs code and deviations:
- Negatives: the reference code's CIFAR loader draws them from other classes than the
  anchor's (``mode="exact"``), without replacement; ``negatives="other_class"`` (default)
  draws uniformly with replacement and re-draws same-class or own-slot draws a fixed number
  of rounds (vectorised; labels are learnt from the batches as they arrive, so in the
  first epoch unseen slots are accepted). ``negatives="uniform"`` is the memory's own
  uniform sampler (used by the reference code when no indices are given).
- K is capped at ``num_train − 1`` so that small training splits (``digits``) work; the
  noise prior stays 1/``num_train``.
"""

from __future__ import annotations

import math
from typing import Annotated, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.api import (
    Batch,
    Method,
    ModelInfo,
    Outputs,
    Range,
    TaskInfo,
    TrainContext,
    register_method,
    require_teacher,
)

NCE_EPS = 1e-7
RESAMPLE_ROUNDS = 8


class Embed(nn.Module):
    """Linear projection onto the unit sphere (output in fp32)."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.linear(x.flatten(1)).float(), dim=1, eps=1e-12)


def nce_loss(log_p: Tensor, num_train: int) -> Tensor:
    """NCE loss of B×(K+1) log-probabilities, the positive in column 0 (reference Eq. 18)."""
    k = log_p.shape[1] - 1
    log_noise = math.log(k / num_train)
    log_denominator_offset = math.log(k / num_train + NCE_EPS)
    pos, neg = log_p[:, 0], log_p[:, 1:]
    log_d1 = pos - torch.logaddexp(pos, torch.full_like(pos, log_denominator_offset))
    log_d0 = log_noise - torch.logaddexp(neg, torch.full_like(neg, log_denominator_offset))
    return -(log_d1.sum() + log_d0.sum()) / log_p.shape[0]


@register_method("crd")
class ContrastiveRepresentationDistillation(Method):
    """Contrast each student embedding with the teacher's memory of many samples, and the
    reverse.

    Attributes:
        beta: Weight of the contrastive term (0.8).
        feat_dim: Width of the embedding heads and memory banks (128).
        nce_k: Negatives per anchor K (16384; capped at ``num_train − 1``).
        nce_t: Temperature τ (0.07).
        nce_m: Momentum μ of the memory update (0.5).
        negatives: ``other_class`` (reference CIFAR loader) or ``uniform``.
    """

    knowledge = "relation"
    mode = "offline"
    needs = frozenset({"embedding"})
    version = 1

    class Params(Method.Params):
        beta: Annotated[float, Range(ge=0)] = 0.8
        feat_dim: Annotated[int, Range(ge=1)] = 128
        nce_k: Annotated[int, Range(ge=1)] = 16384
        nce_t: Annotated[float, Range(gt=0)] = 0.07
        nce_m: Annotated[float, Range(ge=0, lt=1)] = 0.5
        negatives: Literal["other_class", "uniform"] = "other_class"

    search_space: ClassVar[dict[str, list]] = {"beta": [0.2, 0.8, 3.2], "nce_t": [0.05, 0.07, 0.1]}

    # Buffers registered in setup(), declared for the type checker: nn.Module's attribute
    # lookup types them as Tensor | Module.
    memory_s: Tensor
    memory_t: Tensor
    log_z: Tensor
    z_ready: Tensor
    labels: Tensor

    def supports(
        self, student: ModelInfo, teacher: ModelInfo | None, task: TaskInfo
    ) -> tuple[bool, str]:
        if teacher is None:
            return False, "needs a teacher"
        if task.num_train < 2:
            return False, f"needs at least 2 training samples for negatives, got {task.num_train}"
        return True, ""

    def setup(self, student: ModelInfo, teacher: ModelInfo | None, task: TaskInfo) -> None:
        assert teacher is not None
        p = self.params
        n = task.num_train
        self.num_train = n
        self.k = min(p.nce_k, n - 1)
        self.embed_s = Embed(student.embedding_dim, p.feat_dim)
        self.embed_t = Embed(teacher.embedding_dim, p.feat_dim)
        stdv = 1.0 / math.sqrt(p.feat_dim / 3)
        self.register_buffer("memory_s", torch.rand(n, p.feat_dim) * 2 * stdv - stdv)
        self.register_buffer("memory_t", torch.rand(n, p.feat_dim) * 2 * stdv - stdv)
        self.register_buffer("log_z", torch.zeros(2))  # student-, teacher-anchored
        self.register_buffer("z_ready", torch.zeros((), dtype=torch.bool))
        self.register_buffer("labels", torch.full((n,), -1, dtype=torch.long))
        self._stream: torch.Generator | None = None
        self._device_generators: dict[str, torch.Generator] = {}

    def before_training(self, ctx: TrainContext) -> None:
        # A CPU stream seeded by the trial gives one seed per step; its state is part of the
        # checkpoint (extra state), so a resumed trial draws the same negatives.
        seed = int(torch.randint(0, 2**62, (1,), generator=ctx.generator))
        self._stream = torch.Generator().manual_seed(seed)

    def get_extra_state(self) -> dict[str, Tensor]:
        return {} if self._stream is None else {"stream": self._stream.get_state()}

    def set_extra_state(self, state: dict[str, Tensor]) -> None:
        if "stream" in state:
            self._stream = torch.Generator()
            self._stream.set_state(state["stream"])

    def _step_generator(self, device: torch.device) -> torch.Generator | None:
        """A generator on ``device`` seeded from the stream (None outside a trial: then the
        default generator, which the harness seeds). The negatives are drawn where they are
        used, with no host-to-device copy of B×K indices."""
        if self._stream is None:
            return None
        seed = int(torch.randint(0, 2**62, (1,), generator=self._stream))
        generator = self._device_generators.get(str(device))
        if generator is None:
            generator = self._device_generators[str(device)] = torch.Generator(device=device)
        return generator.manual_seed(seed)

    def contrast_indices(self, batch: Batch) -> Tensor:
        """B×(K+1) memory slots: the sample's own slot, then K negatives."""
        index, y = batch.index, batch.y
        generator = self._step_generator(index.device)

        def draw() -> Tensor:
            shape = (index.shape[0], self.k)
            return torch.randint(0, self.num_train, shape, device=index.device, generator=generator)

        negatives = draw()
        if self.params.negatives == "other_class":
            self.labels[index] = y
            for _ in range(RESAMPLE_ROUNDS):
                same = (self.labels[negatives] == y[:, None]) | (negatives == index[:, None])
                negatives = torch.where(same, draw(), negatives)
        return torch.cat([index[:, None], negatives], dim=1)

    def loss(self, batch: Batch, student: Outputs, teacher: Outputs | None) -> dict[str, Tensor]:
        teacher = require_teacher(teacher, "crd")
        assert student.embedding is not None and teacher.embedding is not None
        p = self.params
        v_s = self.embed_s(student.embedding)
        v_t = self.embed_t(teacher.embedding)
        slots = self.contrast_indices(batch)
        with torch.autocast(device_type=v_s.device.type, enabled=False):
            # student anchor against the teacher's memory, and the reverse
            scores_s = torch.bmm(self.memory_t[slots], v_s.unsqueeze(2)).squeeze(2) / p.nce_t
            scores_t = torch.bmm(self.memory_s[slots], v_t.unsqueeze(2)).squeeze(2) / p.nce_t
        log_z = self._normalisers(scores_s.detach(), scores_t.detach())
        loss = nce_loss(scores_s - log_z[0], self.num_train)
        loss = loss + nce_loss(scores_t - log_z[1], self.num_train)
        self._update_memory(batch.index, v_s.detach(), v_t.detach())
        return {"crd": p.beta * loss}

    @torch.no_grad()
    def _normalisers(self, scores_s: Tensor, scores_t: Tensor) -> Tensor:
        """log Z per direction: Z = mean(exp(score)) · num_train, set on the first batch and
        kept (selected on the device, without a host synchronisation)."""
        log_n = math.log(self.num_train)
        candidate = torch.stack(
            [
                torch.logsumexp(scores.flatten(), 0) - math.log(scores.numel()) + log_n
                for scores in (scores_s, scores_t)
            ]
        )
        self.log_z.copy_(torch.where(self.z_ready, self.log_z, candidate))
        self.z_ready.fill_(True)
        return self.log_z.clone()

    @torch.no_grad()
    def _update_memory(self, index: Tensor, v_s: Tensor, v_t: Tensor) -> None:
        m = self.params.nce_m
        for memory, v in ((self.memory_s, v_s), (self.memory_t, v_t)):
            updated = memory[index] * m + v * (1.0 - m)
            memory[index] = F.normalize(updated, dim=1, eps=1e-12)
