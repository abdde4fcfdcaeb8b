"""Instance relationship graph (IRG).

Paper: Yufan Liu, Jiajiong Cao, Bing Li, Chunfeng Yuan, Weiming Hu, Yangxi Li, Yunqiang Duan,
"Knowledge Distillation via Instance Relationship Graph", CVPR 2019.
https://openaccess.thecvf.com/content_CVPR_2019/html/Liu_Knowledge_Distillation_via_Instance_Relationship_Graph_CVPR_2019_paper.html
Reference code: the authors' Caffe code (https://github.com/yufanLIU/IRG); the PyTorch form
followed here: https://github.com/AberHu/Knowledge-Distillation-Zoo (``kd_losses/irg.py``).
The CRD benchmark does not include IRG; the defaults are Knowledge-Distillation-Zoo's.

The graph of a batch at a layer has the samples' features as vertices and their squared
Euclidean distances, divided by the largest one, as edges. Three terms:

- vertex: MSE between student and teacher logits (the graph's vertices at the output layer);
- edge: MSE between the student's and the teacher's normalised distance matrices, averaged
  over the layers: the two deepest aligned stage pairs and the pooled embedding;
- transformation: for each sample, the squared distance between its features at the two
  deepest stages of the same network (divided by the largest in the batch); MSE between the
  student's and the teacher's vectors of those distances.

Weights 0.1 (vertex), 5 (edge), 5 (transformation).

Paper vs code: the paper's IRG transformation compares features of two layers of equal size;
where the two stages differ, the reference code pools the shallower map to the deeper one's
spatial size and averages adjacent channel pairs of the deeper one (it assumes exactly twice
the channels). Here channels are reduced with adaptive average pooling over the channel
axis to the smaller count (the same operation when the ratio is 2), so any pair of widths
works. ``transformation=False`` gives the paper's IRG without the transformation term.
"""

from __future__ import annotations

from typing import Annotated, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from bench.api import (
    Batch,
    Method,
    ModelInfo,
    Outputs,
    Range,
    TaskInfo,
    align_stages,
    describe_pairs,
    match_spatial,
    register_method,
    require_teacher,
    spatial_supports,
)


def edge_matrix(feature: Tensor, eps: float = 1e-12) -> Tensor:
    """Squared pairwise Euclidean distances of the flattened samples, 0 on the diagonal,
    divided by their maximum (b×b, fp32)."""
    e = feature.float().flatten(1)
    e = e - e.mean(dim=0, keepdim=True)
    with torch.autocast(device_type=e.device.type, enabled=False):
        gram = e @ e.t()
    sq = gram.diagonal()
    dist = (sq[:, None] + sq[None, :] - 2 * gram).clamp_min(eps)
    dist = dist * (1.0 - torch.eye(e.shape[0], device=e.device, dtype=e.dtype))
    return dist / dist.max().clamp_min(eps)


def reduce_channels(feature: Tensor, channels: int) -> Tensor:
    """Average-pool an N×C×H×W map over its channel axis down to ``channels``."""
    if feature.shape[1] == channels:
        return feature
    n, c, h, w = feature.shape
    pooled = F.adaptive_avg_pool1d(feature.flatten(2).transpose(1, 2).reshape(-1, 1, c), channels)
    return pooled.reshape(n, h * w, channels).transpose(1, 2).reshape(n, channels, h, w)


def transformation(shallow: Tensor, deep: Tensor, eps: float = 1e-12) -> Tensor:
    """Per-sample squared distance between a shallow and a deeper stage of one network,
    divided by the batch maximum (b, fp32)."""
    shallow, deep = shallow.float(), deep.float()
    if shallow.shape[-2:] != deep.shape[-2:]:
        if shallow.shape[-2] >= deep.shape[-2]:
            shallow = match_spatial(shallow, deep)
        else:
            deep = match_spatial(deep, shallow)
    channels = min(shallow.shape[1], deep.shape[1])
    shallow, deep = reduce_channels(shallow, channels), reduce_channels(deep, channels)
    dist = (shallow - deep).flatten(1).pow(2).sum(dim=1).clamp_min(eps)
    return dist / dist.max()


@register_method("irg")
class InstanceRelationshipGraph(Method):
    """Vertex, edge and transformation losses of the instance relationship graph.

    Attributes:
        w_vertex: Weight of the vertex (logit MSE) term (0.1).
        w_edge: Weight of the edge term (5).
        w_transform: Weight of the transformation term (5).
        transformation: Whether to add the transformation term (IRG-t).
    """

    knowledge = "graph"
    mode = "offline"
    needs = frozenset({"features", "embedding"})
    version = 1

    class Params(Method.Params):
        w_vertex: Annotated[float, Range(ge=0)] = 0.1
        w_edge: Annotated[float, Range(ge=0)] = 5.0
        w_transform: Annotated[float, Range(ge=0)] = 5.0
        transformation: bool = True

    search_space: ClassVar[dict[str, list]] = {
        "w_edge": [1.25, 5.0, 20.0],
        "w_vertex": [0.025, 0.1, 0.4],
    }

    def supports(
        self, student: ModelInfo, teacher: ModelInfo | None, task: TaskInfo
    ) -> tuple[bool, str]:
        ok, reason = spatial_supports(student, teacher)
        if ok and teacher is not None and teacher.num_classes != student.num_classes:
            return False, (
                f"the vertex term compares logits, but the teacher has {teacher.num_classes} "
                f"classes and the student {student.num_classes}"
            )
        return ok, reason

    def setup(self, student: ModelInfo, teacher: ModelInfo | None, task: TaskInfo) -> None:
        assert teacher is not None
        self.pairs = align_stages(student, teacher)[-2:]
        self.stage_pairs = describe_pairs(student, teacher, task, self.pairs)

    def setup_facts(self) -> dict[str, str]:
        return {"stage_pairs": self.stage_pairs}

    def loss(self, batch: Batch, student: Outputs, teacher: Outputs | None) -> dict[str, Tensor]:
        teacher = require_teacher(teacher, "irg")
        assert student.embedding is not None and teacher.embedding is not None
        p = self.params
        vertex = F.mse_loss(student.logits.float(), teacher.logits.float())
        layers_s = [student.features[s] for s, _ in self.pairs] + [student.embedding]
        layers_t = [teacher.features[t] for _, t in self.pairs] + [teacher.embedding]
        edge = sum(
            F.mse_loss(edge_matrix(s), edge_matrix(t))
            for s, t in zip(layers_s, layers_t, strict=True)
        ) / len(layers_s)
        terms = {"irg_vertex": p.w_vertex * vertex, "irg_edge": p.w_edge * edge}
        if p.transformation and len(self.pairs) == 2:
            (s1, t1), (s2, t2) = self.pairs
            tran_s = transformation(student.features[s1], student.features[s2])
            tran_t = transformation(teacher.features[t1], teacher.features[t2])
            terms["irg_transform"] = p.w_transform * F.mse_loss(tran_s, tran_t)
        return terms
