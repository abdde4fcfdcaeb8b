"""Fidelity of the feature- and relation-based methods.

Each test runs a method's ``setup`` + ``loss`` on tiny hand-made tensors (connector weights
set to known values where the method has any) and compares the result with an independent
computation of the paper's equation written out here in float64, to 1e-5 relative. The
independent values are stored in ``fixtures/fidelity_features.json``; ``--regen-fidelity``
rewrites them (after checking the method against them), a missing value fails.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from bench.api import Batch, ModelInfo, Outputs, TaskInfo
from bench.plugins import build_method

FIXTURE = Path(__file__).parent / "fixtures" / "fidelity_features.json"
RTOL = 1e-5
N = 5  # batch size
TASK = TaskInfo(
    dataset="synthetic",
    num_classes=4,
    input_size=(3, 16, 16),
    num_train=12,
    epochs=8,
    steps_per_epoch=3,
)


# --------------------------------------------------------------------------------------------
# Inputs and bookkeeping
# --------------------------------------------------------------------------------------------


def values(*shape: int, seed: int, low: float = -1.0, high: float = 1.0) -> torch.Tensor:
    """Deterministic pseudo-random float32 values in [low, high) from a closed formula
    (independent of torch's generators, so fixtures survive library upgrades)."""
    i = np.arange(math.prod(shape), dtype=np.float64)
    u = np.mod(np.sin(i * 12.9898 + seed * 78.233 + 0.5) * 43758.5453, 1.0)
    return torch.from_numpy(low + (high - low) * u).reshape(shape).float()


def f64(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def model_info(channels: tuple[int, ...], reductions: tuple[int, ...], dim: int) -> ModelInfo:
    return ModelInfo(
        name="synthetic",
        family="synthetic",
        num_classes=TASK.num_classes,
        feature_channels=channels,
        feature_reductions=reductions,
        embedding_dim=dim,
        num_params=0,
    )


def batch(step: int = 0) -> Batch:
    return Batch(
        x=torch.zeros(N, 3, 16, 16),
        y=torch.tensor([0, 1, 2, 3, 1]),
        index=torch.tensor([3, 0, 7, 11, 5]),
        step=step,
    )


def outputs(
    features: list[torch.Tensor], embedding: torch.Tensor | None = None, seed: int = 0
) -> Outputs:
    return Outputs(
        logits=values(N, TASK.num_classes, seed=seed + 100, low=-3, high=3),
        features=features,
        preact_features=features,
        embedding=embedding,
    )


@pytest.fixture(scope="module")
def stored() -> dict[str, float]:
    return json.loads(FIXTURE.read_text()) if FIXTURE.exists() else {}


@pytest.fixture
def fidelity(request, stored):
    """``check(key, method_value, independent_value)``."""
    regen = request.config.getoption("--regen-fidelity")

    def check(key: str, method_value: float, independent: float) -> None:
        assert method_value == pytest.approx(independent, rel=RTOL), key
        if regen:
            stored[key] = independent
            FIXTURE.parent.mkdir(parents=True, exist_ok=True)
            FIXTURE.write_text(json.dumps(dict(sorted(stored.items())), indent=2) + "\n")
            return
        assert key in stored, f"{key} missing from {FIXTURE.name}; run pytest --regen-fidelity"
        assert method_value == pytest.approx(stored[key], rel=RTOL), key
        assert independent == pytest.approx(stored[key], rel=RTOL), key

    return check


def run(name: str, params: dict, student: ModelInfo, teacher: ModelInfo):
    """A method set up for the pair, after checking that it supports it."""
    method = build_method(name, params)
    ok, reason = method.supports(student, teacher, TASK)
    assert ok, reason
    method.setup(student, teacher, TASK)
    return method


def mean_pool(x: np.ndarray, k: int) -> np.ndarray:
    """k×k average pooling with stride k of an N×C×H×W array."""
    n, c, h, w = x.shape
    return x.reshape(n, c, h // k, k, w // k, k).mean(axis=(3, 5))


def huber(d: np.ndarray) -> np.ndarray:
    a = np.abs(d)
    return np.where(a < 1.0, 0.5 * d**2, a - 0.5)


# --------------------------------------------------------------------------------------------
# Attention transfer
# --------------------------------------------------------------------------------------------

AT_STUDENT = model_info((3, 4), (2, 4), 6)
AT_TEACHER = model_info((4, 6), (4, 8), 7)


def at_inputs():
    s = [values(N, 3, 8, 8, seed=1), values(N, 4, 4, 4, seed=2)]
    t = [values(N, 4, 4, 4, seed=3), values(N, 6, 2, 2, seed=4)]
    return s, t


def at_maps(f: np.ndarray, p: float = 2.0) -> np.ndarray:
    q = (np.abs(f) ** p).sum(axis=1).reshape(f.shape[0], -1)  # Σ_c |A_c|^p
    return q / np.linalg.norm(q, axis=1, keepdims=True)


@pytest.mark.parametrize("variant", ["code", "paper"])
def test_at(fidelity, variant):
    s, t = at_inputs()
    method = run("at", {"variant": variant}, AT_STUDENT, AT_TEACHER)
    got = method.loss(batch(), outputs(s), outputs(t))["at"].item()

    # the student's maps are twice the teacher's size: 2×2 average pooling first
    students = [mean_pool(f64(s[0]), 2), mean_pool(f64(s[1]), 2)]
    expected = 0.0
    for fs, ft in zip(students, [f64(x) for x in t], strict=True):
        diff = at_maps(fs) - at_maps(ft)
        if variant == "code":
            expected += 1000.0 * np.mean(diff**2)
        else:  # β/2 · Σ_n ‖ΔQ_n‖_2 with β = 1000 / (batch · positions)
            expected += 1000.0 / (N * diff.shape[1]) / 2 * np.linalg.norm(diff, axis=1).sum()
    fidelity(f"at_{variant}", got, expected)


# --------------------------------------------------------------------------------------------
# Neuron selectivity transfer
# --------------------------------------------------------------------------------------------


def test_nst(fidelity):
    student, teacher = model_info((3, 4), (4, 8), 6), model_info((5, 2), (4, 8), 6)
    s = [values(N, 3, 4, 4, seed=5), values(N, 4, 2, 2, seed=6)]
    t = [values(N, 5, 4, 4, seed=7), values(N, 2, 2, 2, seed=8)]
    method = run("nst", {}, student, teacher)
    got = method.loss(batch(), outputs(s), outputs(t))["nst"].item()

    def k(a, b):  # polynomial kernel, d = 2, c = 0
        return float(a @ b) ** 2

    expected = 0.0
    for fs, ft in zip(s, t, strict=True):
        total = 0.0
        for n in range(N):
            xs = [v / np.linalg.norm(v) for v in f64(fs)[n].reshape(fs.shape[1], -1)]
            xt = [v / np.linalg.norm(v) for v in f64(ft)[n].reshape(ft.shape[1], -1)]
            mmd = sum(k(a, b) for a in xt for b in xt) / len(xt) ** 2
            mmd += sum(k(a, b) for a in xs for b in xs) / len(xs) ** 2
            mmd -= 2 * sum(k(a, b) for a in xs for b in xt) / (len(xs) * len(xt))
            total += mmd
        expected += 50.0 * total / N
    fidelity("nst", got, expected)


# --------------------------------------------------------------------------------------------
# Similarity-preserving
# --------------------------------------------------------------------------------------------


def test_sp(fidelity):
    student, teacher = model_info((3, 4), (4, 8), 6), model_info((5, 6), (4, 8), 6)
    s = [values(N, 3, 4, 4, seed=9), values(N, 4, 2, 2, seed=10)]
    t = [values(N, 5, 4, 4, seed=11), values(N, 6, 1, 1, seed=12)]
    method = run("sp", {}, student, teacher)
    got = method.loss(batch(), outputs(s), outputs(t))["sp"].item()

    def g(f):  # G = Q Qᵀ with rows L2-normalised
        q = f64(f).reshape(N, -1)
        gram = q @ q.T
        return gram / np.linalg.norm(gram, axis=1, keepdims=True)

    expected = 3000.0 * np.sum((g(t[1]) - g(s[1])) ** 2) / N**2  # last stage only
    fidelity("sp", got, expected)


# --------------------------------------------------------------------------------------------
# Relational KD
# --------------------------------------------------------------------------------------------


def test_rkd(fidelity):
    student, teacher = model_info((3,), (4,), 6), model_info((3,), (4,), 8)
    es, et = values(N, 6, seed=13), values(N, 8, seed=14, low=-2, high=2)
    s, t = outputs([], es), outputs([], et)
    method = run("rkd", {}, student, teacher)
    terms = method.loss(batch(), s, t)
    got = terms["rkd_dist"].item() + terms["rkd_angle"].item()

    def distance_potential(e):
        d = np.array([[np.linalg.norm(e[i] - e[j]) for j in range(N)] for i in range(N)])
        mu = sum(d[i, j] for i in range(N) for j in range(N) if i != j) / (N * (N - 1))
        return d / mu

    def angle_potential(e):
        a = np.zeros((N, N, N))
        for j, i, k in itertools.product(range(N), repeat=3):
            if i != j and k != j:
                u, v = e[i] - e[j], e[k] - e[j]
                a[j, i, k] = u @ v / (np.linalg.norm(u) * np.linalg.norm(v))
        return a

    e_s, e_t = f64(es), f64(et)
    dist = huber(distance_potential(e_s) - distance_potential(e_t)).mean()
    angle = huber(angle_potential(e_s) - angle_potential(e_t)).mean()
    fidelity("rkd", got, 25.0 * dist + 50.0 * angle)


# --------------------------------------------------------------------------------------------
# Probabilistic knowledge transfer
# --------------------------------------------------------------------------------------------


def test_pkt(fidelity):
    student, teacher = model_info((3,), (4,), 6), model_info((3,), (4,), 8)
    es, et = values(N, 6, seed=15), values(N, 8, seed=16)
    s, t = outputs([], es), outputs([], et)
    method = run("pkt", {}, student, teacher)
    got = method.loss(batch(), s, t)["pkt"].item()

    def conditional(e):
        eps = 1e-7
        x = e / (np.linalg.norm(e, axis=1, keepdims=True) + eps)
        k = (x @ x.T + 1.0) / 2.0  # cosine kernel mapped to [0, 1]
        return k / k.sum(axis=1, keepdims=True)

    p, q = conditional(f64(et)), conditional(f64(es))
    kl = p * (np.log(p + 1e-7) - np.log(q + 1e-7))
    fidelity("pkt", got, 30000.0 * kl.mean())


# --------------------------------------------------------------------------------------------
# Correlation congruence
# --------------------------------------------------------------------------------------------


def test_cc_paper(fidelity):
    student, teacher = model_info((3,), (4,), 6), model_info((3,), (4,), 8)
    es, et = values(N, 6, seed=17), values(N, 8, seed=18)
    s, t = outputs([], es), outputs([], et)
    method = run("cc", {}, student, teacher)
    got = method.loss(batch(), s, t)["cc"].item()

    def correlation(e, gamma=0.4, order=2):
        x = e / np.linalg.norm(e, axis=1, keepdims=True)
        c = np.zeros((N, N))
        for i, j in itertools.product(range(N), repeat=2):
            c[i, j] = sum(
                math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p) * (x[i] @ x[j]) ** p
                for p in range(order + 1)
            )
        return c

    diff = correlation(f64(et)) - correlation(f64(es))
    fidelity("cc_paper", got, 100.0 * np.sum(diff**2) / N**2)


def test_cc_crd(fidelity):
    student, teacher = model_info((3,), (4,), 6), model_info((3,), (4,), 8)
    es, et = values(N, 6, seed=19), values(N, 8, seed=20)
    s, t = outputs([], es), outputs([], et)
    method = run("cc", {"variant": "crd", "beta": 0.02, "feat_dim": 3}, student, teacher)
    ws, bs = values(3, 6, seed=21), values(3, seed=22)
    wt, bt = values(3, 8, seed=23), values(3, seed=24)
    with torch.no_grad():
        method.embed_s.weight.copy_(ws), method.embed_s.bias.copy_(bs)
        method.embed_t.weight.copy_(wt), method.embed_t.bias.copy_(bt)
    got = method.loss(batch(), s, t)["cc"].item()

    zs = f64(es) @ f64(ws).T + f64(bs)
    zt = f64(et) @ f64(wt).T + f64(bt)
    delta = np.abs(zs - zt)
    expected = np.mean([np.sum(delta[i] * delta[i + 1]) for i in range(N - 1)])
    fidelity("cc_crd", got, 0.02 * expected)


# --------------------------------------------------------------------------------------------
# Instance relationship graph
# --------------------------------------------------------------------------------------------


def test_irg(fidelity):
    student, teacher = model_info((2, 3, 6), (2, 4, 8), 6), model_info((4, 8), (4, 8), 8)
    s_feats = [
        values(N, 2, 8, 8, seed=25),
        values(N, 3, 4, 4, seed=26),
        values(N, 6, 2, 2, seed=27),
    ]
    t_feats = [values(N, 4, 4, 4, seed=28), values(N, 8, 2, 2, seed=29)]
    s = outputs(s_feats, values(N, 6, seed=30), seed=1)
    t = outputs(t_feats, values(N, 8, seed=31), seed=2)
    method = run("irg", {}, student, teacher)
    terms = method.loss(batch(), s, t)
    got = sum(v.item() for v in terms.values())

    def edges(f):
        x = f64(f).reshape(N, -1)
        d = np.array([[np.sum((x[i] - x[j]) ** 2) for j in range(N)] for i in range(N)])
        return d / d.max()

    def transform(shallow, deep):
        a = mean_pool(f64(shallow), shallow.shape[-1] // deep.shape[-1])
        b = f64(deep)
        b = (b[:, 0::2] + b[:, 1::2]) / 2  # twice the channels: average adjacent pairs
        d = ((a - b) ** 2).reshape(N, -1).sum(axis=1)
        return d / d.max()

    vertex = np.mean((f64(s.logits) - f64(t.logits)) ** 2)
    layers = [(s_feats[1], t_feats[0]), (s_feats[2], t_feats[1]), (s.embedding, t.embedding)]
    edge = np.mean([np.mean((edges(a) - edges(b)) ** 2) for a, b in layers])
    tran = np.mean((transform(s_feats[1], s_feats[2]) - transform(t_feats[0], t_feats[1])) ** 2)
    fidelity("irg", got, 0.1 * vertex + 5.0 * edge + 5.0 * tran)


# --------------------------------------------------------------------------------------------
# FitNets (joint hint loss through the CRD benchmark's ConvReg)
# --------------------------------------------------------------------------------------------


def identity_connector(connector: torch.nn.Module, weight: torch.Tensor | None = None) -> None:
    """Set a conv + BN connector to x ↦ W x (identity W by default), BN in eval mode."""
    conv, bn = connector[0], connector[1]
    with torch.no_grad():
        w = torch.eye(conv.out_channels, conv.in_channels) if weight is None else weight
        conv.weight.copy_(w.reshape(conv.weight.shape))
        bn.running_mean.zero_(), bn.running_var.fill_(1.0 - bn.eps)
        bn.weight.fill_(1.0), bn.bias.zero_()
    connector.eval()


def conv2d(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int, pad: int) -> np.ndarray:
    """Cross-correlation of N×C×H×W with O×C×kh×kw, zero padding, plus a bias per output."""
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    kh, kw = w.shape[-2:]
    h = (x.shape[2] - kh) // stride + 1
    v = (x.shape[3] - kw) // stride + 1
    out = np.zeros((x.shape[0], w.shape[0], h, v))
    for i, j in itertools.product(range(h), range(v)):
        patch = x[:, :, i * stride : i * stride + kh, j * stride : j * stride + kw]
        out[:, :, i, j] = np.einsum("nchw,ochw->no", patch, w)
    return out + b.reshape(1, -1, 1, 1)


def conv_transpose2d(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int, pad: int):
    """Transposed convolution of N×C×H×W with C×O×kh×kw: every input position scatters its
    kernel-weighted values to ``stride·position − pad + offset``."""
    n, _, h, v = x.shape
    kh, kw = w.shape[-2:]
    full = np.zeros((n, w.shape[1], (h - 1) * stride + kh, (v - 1) * stride + kw))
    for i, j in itertools.product(range(h), range(v)):
        full[:, :, i * stride : i * stride + kh, j * stride : j * stride + kw] += np.einsum(
            "nc,cohw->nohw", x[:, :, i, j], w
        )
    out = full[:, :, pad : full.shape[2] - pad, pad : full.shape[3] - pad]
    return out + b.reshape(1, -1, 1, 1)


def batch_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float = 1e-5):
    """BatchNorm in training mode: batch statistics per channel (biased variance)."""
    mean = x.mean(axis=(0, 2, 3), keepdims=True)
    var = x.var(axis=(0, 2, 3), keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma.reshape(1, -1, 1, 1) + beta.reshape(1, -1, 1, 1)


def fitnet_info(channels: int, size: int) -> ModelInfo:
    """Two stages; the second (the hint pair of two aligned pairs) is ``size``×``size``."""
    return ModelInfo(
        "synthetic",
        "synthetic",
        TASK.num_classes,
        (2, channels),
        (1, 16 // size),
        6,
        0,
        feature_sizes=((16, 16), (size, size)),
    )


#: (student size, teacher size) → ConvReg's convolution: (transposed, kernel, stride, padding).
CONVREG_CASES = {
    "same": (4, 4, (False, 1, 1, 0)),
    "halve": (4, 2, (False, 3, 2, 1)),
    "double": (2, 4, (True, 4, 2, 1)),
    "shrink": (4, 3, (False, 2, 1, 0)),  # kernel 1 + H_s − H_t
}


@pytest.mark.parametrize("relu", [True, False], ids=["relu", "no_relu"])
@pytest.mark.parametrize("case", list(CONVREG_CASES))
def test_fitnet_hint_loss_through_convreg(fidelity, case, relu):
    s_size, t_size, (transposed, k, stride, pad) = CONVREG_CASES[case]
    cs, ct = 3, 4
    params = {"stages": "joint", "regressor_relu": relu}
    method = run("fitnet", params, fitnet_info(cs, s_size), fitnet_info(ct, t_size))
    assert method.pair == (1, 1)  # hint_pair: the middle of two aligned pairs, rounding deeper
    f_s = values(N, cs, s_size, s_size, seed=32)
    f_t = values(N, ct, t_size, t_size, seed=35, low=0)  # hints are post-ReLU
    shape = (cs, ct, k, k) if transposed else (ct, cs, k, k)
    w = values(*shape, seed=36, low=-0.5, high=0.5)
    b, gamma, beta = (
        values(ct, seed=37),
        values(ct, seed=38, low=0.5, high=1.5),
        values(ct, seed=39),
    )
    reg = method.regressor
    assert tuple(reg.conv.weight.shape) == shape
    assert isinstance(reg.conv, torch.nn.ConvTranspose2d) == transposed
    with torch.no_grad():
        reg.conv.weight.copy_(w), reg.conv.bias.copy_(b)
        reg.bn.weight.copy_(gamma), reg.bn.bias.copy_(beta)
    method.train()  # as in training: BatchNorm normalises with the batch's statistics
    dummy = [values(N, 2, 16, 16, seed=40)]
    got = method.loss(batch(), outputs([*dummy, f_s]), outputs([*dummy, f_t]))["hint"].item()

    # RepDistiller: HintLoss = MSELoss()(ConvReg(f_s), f_t), ConvReg = relu(bn(conv(x))); β = 100
    conv = conv_transpose2d if transposed else conv2d
    r = batch_norm(conv(f64(f_s), f64(w), f64(b), stride, pad), f64(gamma), f64(beta))
    if relu:
        r = np.maximum(r, 0.0)
    assert r.shape == tuple(f_t.shape)
    expected = 100.0 * np.mean((r - f64(f_t)) ** 2)
    fidelity(f"fitnet_convreg_{case}_{'relu' if relu else 'no_relu'}", got, expected)


def test_fitnet_regressor_reaches_the_hint_size_where_convreg_has_no_rule():
    # a guided map under half the hint's size: a 1×1 convolution, resized to the hint's size
    method = run("fitnet", {"stages": "joint"}, fitnet_info(3, 2), fitnet_info(4, 8))
    dummy = [values(N, 2, 16, 16, seed=40)]
    s = outputs([*dummy, values(N, 3, 2, 2, seed=41)])
    t = outputs([*dummy, values(N, 4, 8, 8, seed=42, low=0)])
    assert method.regressor.conv.kernel_size == (1, 1)
    assert torch.isfinite(method.loss(batch(), s, t)["hint"])


# --------------------------------------------------------------------------------------------
# Variational information distillation (fixed regressor and variance)
# --------------------------------------------------------------------------------------------


def test_vid(fidelity):
    student, teacher = model_info((3, 4), (4, 8), 6), model_info((2, 5), (4, 8), 6)
    s = [values(N, 3, 4, 4, seed=36), values(N, 4, 2, 2, seed=37)]
    t = [values(N, 2, 4, 4, seed=38), values(N, 5, 2, 2, seed=39)]
    method = run("vid", {}, student, teacher)
    weights, alphas = [], []
    for i, regressor in enumerate(method.regressors):
        ws = []
        with torch.no_grad():
            for j, conv in enumerate(m for m in regressor.mean if isinstance(m, torch.nn.Conv2d)):
                w = values(conv.out_channels, conv.in_channels, seed=40 + 3 * i + j)
                conv.weight.copy_(w.reshape(conv.weight.shape))
                ws.append(f64(w))
            alpha = values(regressor.alpha.shape[0], seed=50 + i, low=-2, high=3)
            regressor.alpha.copy_(alpha)
        weights.append(ws)
        alphas.append(f64(alpha))
    got = method.loss(batch(), outputs(s), outputs(t))["vid"].item()

    expected = 0.0
    for fs, ft, (w1, w2, w3), alpha in zip(s, t, weights, alphas, strict=True):
        x = f64(fs)
        h = np.maximum(np.einsum("oc,nchw->nohw", w1, x), 0)
        h = np.maximum(np.einsum("oc,nchw->nohw", w2, h), 0)
        mu = np.einsum("oc,nchw->nohw", w3, h)
        var = (np.log1p(np.exp(alpha)) + 1e-5).reshape(1, -1, 1, 1)  # softplus + ε
        nll = 0.5 * ((mu - f64(ft)) ** 2 / var + np.log(var))
        expected += nll.mean()
    fidelity("vid", got, expected)


# --------------------------------------------------------------------------------------------
# Activation boundaries (fixed connectors)
# --------------------------------------------------------------------------------------------


def test_ab(fidelity):
    student, teacher = model_info((3, 4), (4, 8), 6), model_info((2, 5), (4, 8), 6)
    s = [values(N, 3, 4, 4, seed=60, low=-2, high=2), values(N, 4, 2, 2, seed=61, low=-2, high=2)]
    t = [values(N, 2, 4, 4, seed=62), values(N, 5, 2, 2, seed=63)]
    method = run("ab", {}, student, teacher)
    weights = [values(2, 3, seed=64), values(5, 4, seed=65)]
    for connector, w in zip(method.connectors, weights, strict=True):
        identity_connector(connector, w)
    got = method.loss(batch(), outputs(s), outputs(t))["ab"].item()

    margin, expected = 1.0, 0.0
    for layer, (fs, ft, w) in enumerate(zip(s, t, weights, strict=True)):
        r = np.einsum("oc,nchw->nohw", f64(w), f64(fs))
        target = f64(ft)
        wrong_off = (r > -margin) & (target <= 0)
        wrong_on = (r <= margin) & (target > 0)
        alternative = np.sum((r + margin) ** 2 * wrong_off + (r - margin) ** 2 * wrong_on)
        expected += alternative / N / 2 ** (len(s) - 1 - layer)  # deepest 1, then ½
    fidelity("ab", got, expected * 3 / 1000)


# --------------------------------------------------------------------------------------------
# Flow of solution procedure
# --------------------------------------------------------------------------------------------


def test_fsp(fidelity):
    student, teacher = model_info((3, 4, 5), (4, 4, 8), 6), model_info((3, 4, 5), (2, 4, 8), 6)
    s = [values(N, 3, 4, 4, seed=70), values(N, 4, 4, 4, seed=71), values(N, 5, 2, 2, seed=72)]
    t = [values(N, 3, 8, 8, seed=73), values(N, 4, 4, 4, seed=74), values(N, 5, 2, 2, seed=75)]
    method = run("fsp", {}, student, teacher)
    got = method.loss(batch(), outputs(s), outputs(t))["fsp"].item()

    def fsp(first, second):  # G_ij = Σ_s F1_i(s) F2_j(s) / (h·w), larger map pooled first
        a, b = f64(first), f64(second)
        if a.shape[-1] > b.shape[-1]:
            a = mean_pool(a, a.shape[-1] // b.shape[-1])
        h, w = a.shape[-2:]
        return np.einsum("nihw,njhw->nij", a, b) / (h * w)

    expected = sum(
        np.mean((fsp(s[i], s[i + 1]) - fsp(t[i], t[i + 1])) ** 2) for i in range(len(s) - 1)
    )
    fidelity("fsp", got, expected)


def test_fsp_refuses_unequal_widths():
    method = build_method("fsp")
    ok, reason = method.supports(model_info((3, 4), (4, 8), 6), model_info((3, 5), (4, 8), 6), TASK)
    assert not ok and "[3, 4]" in reason and "[3, 5]" in reason


# --------------------------------------------------------------------------------------------
# Contrastive representation distillation (fixed embeddings, memory and negatives)
# --------------------------------------------------------------------------------------------


def test_crd(fidelity):
    student, teacher = model_info((3,), (4,), 6), model_info((3,), (4,), 8)
    es, et = values(N, 6, seed=80), values(N, 8, seed=81)
    s, t = outputs([], es), outputs([], et)
    method = run("crd", {"feat_dim": 3, "nce_k": 4}, student, teacher)
    ws, bs = values(3, 6, seed=82), values(3, seed=83)
    wt, bt = values(3, 8, seed=84), values(3, seed=85)
    memory_s = torch.nn.functional.normalize(values(TASK.num_train, 3, seed=86), dim=1)
    memory_t = torch.nn.functional.normalize(values(TASK.num_train, 3, seed=87), dim=1)
    with torch.no_grad():
        method.embed_s.linear.weight.copy_(ws), method.embed_s.linear.bias.copy_(bs)
        method.embed_t.linear.weight.copy_(wt), method.embed_t.linear.bias.copy_(bt)
        method.memory_s.copy_(memory_s), method.memory_t.copy_(memory_t)
    b = batch()
    negatives = torch.tensor(
        [[1, 2, 4, 6], [2, 8, 9, 10], [0, 1, 4, 9], [2, 4, 6, 8], [0, 3, 6, 9]]
    )
    slots = torch.cat([b.index[:, None], negatives], dim=1)
    method.contrast_indices = lambda batch: slots
    got = method.loss(b, s, t)["crd"].item()

    def embed(e, w, bias):
        z = f64(e) @ f64(w).T + f64(bias)
        return z / np.linalg.norm(z, axis=1, keepdims=True)

    v_s, v_t = embed(es, ws, bs), embed(et, wt, bt)
    n, k, tau, eps = TASK.num_train, 4, 0.07, 1e-7
    idx = slots.numpy()

    def contrast(anchor, memory):  # P = exp(⟨m, v⟩/τ) / Z, Z = mean(exp) · n (first batch)
        out = np.exp(np.einsum("bkd,bd->bk", f64(memory)[idx], anchor) / tau)
        p = out / (out.mean() * n)
        log_d1 = np.log(p[:, 0] / (p[:, 0] + k / n + eps))
        log_d0 = np.log((k / n) / (p[:, 1:] + k / n + eps))
        return -(log_d1.sum() + log_d0.sum()) / N

    expected = 0.8 * (contrast(v_s, memory_t) + contrast(v_t, memory_s))
    fidelity("crd", got, expected)

    # the positives' slots moved towards this batch's embeddings, without gradient
    updated = 0.5 * f64(memory_s)[b.index.numpy()] + 0.5 * v_s
    updated /= np.linalg.norm(updated, axis=1, keepdims=True)
    np.testing.assert_allclose(f64(method.memory_s)[b.index.numpy()], updated, rtol=1e-5)
    untouched = [i for i in range(n) if i not in set(b.index.tolist())]
    assert torch.equal(method.memory_s[untouched], memory_s[untouched])

    # Z is fixed by the first batch: a later batch with other scores keeps it
    log_z = method.log_z.clone()
    method.loss(b, outputs([], es * 3), outputs([], et * -2))
    assert torch.equal(method.log_z, log_z)


def test_crd_negatives_avoid_the_anchor_class():
    student, teacher = model_info((3,), (4,), 6), model_info((3,), (4,), 8)
    method = build_method("crd", {"nce_k": 64})
    method.setup(student, teacher, TASK)
    labels = torch.arange(TASK.num_train) % TASK.num_classes
    method.labels.copy_(labels)  # as if every slot had been seen
    b = batch()
    b.y = labels[b.index]
    slots = method.contrast_indices(b)
    assert slots.shape == (N, 1 + min(64, TASK.num_train - 1))
    assert torch.equal(slots[:, 0], b.index)
    assert (labels[slots[:, 1:]] != b.y[:, None]).all()


def test_crd_checkpoint_resumes_the_negative_stream():
    student, teacher = model_info((3,), (4,), 6), model_info((3,), (4,), 8)
    method = build_method("crd", {"nce_k": 6})
    method.setup(student, teacher, TASK)
    method.before_training(SimpleNamespace(generator=torch.Generator().manual_seed(3)))
    b = batch()
    first = method.contrast_indices(b)
    restored = build_method("crd", {"nce_k": 6})
    restored.setup(student, teacher, TASK)
    restored.load_state_dict(method.state_dict())
    # the next draws agree, and differ from the first step's
    following = method.contrast_indices(b)
    assert torch.equal(restored.contrast_indices(b), following)
    assert not torch.equal(following, first)
