"""The methods that change the training step, run through the harness's training loop on tiny
models and a slice of the digits data: what each one must do to its own parts, and must never
do to the frozen teacher."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from bench.api import Method, TaskInfo
from bench.config import Recipe, TeacherSpec, TrialConfig
from bench.data import DataBundle, TensorSplit, load_dataset
from bench.models import create_model, model_info
from bench.plugins import build_method
from bench.trial.compose import trial_services
from bench.trial.context import TrialContext, make_context
from bench.trial.device import freeze
from bench.trial.loop import train_loop

STUDENT, TEACHER = "test_resnet_narrow", "test_resnet_wide"
BATCH = 64
# teachers a method obtains from the cache: as short as a teacher can be
TEACHER_SPEC = TeacherSpec(arch=TEACHER, recipe=Recipe(epochs=1, batch_size=128), seed=0)


@pytest.fixture(scope="module")
def digits() -> DataBundle:
    """192 training and 64 validation and test images of the digits data."""
    full = load_dataset("digits")
    info = full.info

    def head(split: TensorSplit, n: int) -> TensorSplit:
        return TensorSplit(
            split.images[:n],
            split.labels[:n],
            mean=info.mean,
            std=info.std,
            crop_padding=info.crop_padding,
            flip=info.flip,
        )

    return DataBundle(
        info=dataclasses.replace(info, num_train=192),
        train=head(full.train, 192),
        val=head(full.val, 64),
        test=head(full.test, 64),
    )


def prepare(
    data: DataBundle,
    name: str,
    params: dict | None = None,
    *,
    epochs: int = 1,
    batch: int = BATCH,
) -> tuple[Method, TrialContext]:
    """A method set up and past ``before_training`` for a (student, random frozen teacher)
    pair, as ``bench.trial.compose.execute`` prepares a trial."""
    torch.manual_seed(0)
    method = build_method(name, params)
    recipe = Recipe(epochs=epochs, batch_size=batch, lr=0.05)
    image = data.info.input_size
    student = create_model(STUDENT, data.info.num_classes, image_size=image[1])
    s_info = model_info(student, STUDENT, image)
    teacher = t_info = None
    if method.uses_teacher:
        teacher = freeze(create_model(TEACHER, data.info.num_classes, image_size=image[1]))
        t_info = model_info(teacher, TEACHER, image)
    task = TaskInfo(
        "digits", data.info.num_classes, image, len(data.train), epochs, len(data.train) // batch
    )
    ok, reason = method.supports(s_info, t_info, task)
    assert ok, reason
    method.setup(s_info, t_info, task)
    config = TrialConfig(
        dataset="digits",
        student=STUDENT,
        method=name,
        recipe=recipe,
        teacher=TEACHER_SPEC if method.uses_teacher else None,
    )
    ctx = make_context(
        student=student,
        student_info=s_info,
        teacher=teacher,
        teacher_info=t_info,
        task=task,
        recipe=recipe,
        device=torch.device("cpu"),
        data=data,
        seed=0,
        services=trial_services(config.dataset, config.teacher, recipe, torch.device("cpu")),
    )
    method.before_training(ctx)
    return method, ctx


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before: dict[str, torch.Tensor], module: nn.Module) -> bool:
    return any(not torch.equal(before[k], v) for k, v in module.state_dict().items())


def first_batch(ctx: TrialContext):
    return next(iter(ctx.train_batches()))


def finite_history(history: list[dict[str, float]]) -> bool:
    return all(math.isfinite(v) for h in history for k, v in h.items() if k.startswith("train/"))


def test_mean_teacher_ema_copy_moves_but_is_never_optimised(digits):
    method, ctx = prepare(digits, "mean_teacher")
    ema_before = snapshot(method.ema)
    history = train_loop(ctx, method, evaluate_val=False)
    assert finite_history(history)
    assert list(method.trainable_parameters()) == []
    assert all(not p.requires_grad and p.grad is None for p in method.ema.parameters())
    assert method.extra_parameters() == 0
    moved = [
        not torch.equal(ema_before[k], p)
        for k, p in method.ema.named_parameters()
        if p.is_floating_point()
    ]
    assert all(moved)
    # an average lags behind the student it averages
    student = dict(ctx.student.named_parameters())
    assert any(not torch.equal(p, student[k]) for k, p in method.ema.named_parameters())


def test_mean_teacher_after_step_averages_the_stepped_student(digits):
    method, ctx = prepare(digits, "mean_teacher")
    ema_before = {k: p.detach().clone() for k, p in method.ema.named_parameters()}
    batch = first_batch(ctx)
    sum(method.train_step(ctx, batch).values()).backward()
    torch.optim.SGD(ctx.student.parameters(), lr=0.1).step()
    method.after_step(ctx, batch)
    decay = method.ema_decay(batch)
    assert decay == pytest.approx(0.99)  # first epoch: inside the 5-epoch ramp-up
    for name, p in ctx.student.named_parameters():
        expected = decay * ema_before[name] + (1 - decay) * p.detach()
        assert torch.allclose(dict(method.ema.named_parameters())[name], expected, atol=1e-7)


def test_adversarial_kd_discriminator_learns_while_the_teacher_stays_bit_identical(digits):
    method, ctx = prepare(digits, "adversarial_kd")
    teacher_before, disc_before = snapshot(ctx.teacher), snapshot(method.discriminator)
    history = train_loop(ctx, method, evaluate_val=False)
    assert finite_history(history) and history[0]["train/adv"] > 0
    assert changed(disc_before, method.discriminator)
    assert not changed(teacher_before, ctx.teacher)
    assert not ctx.teacher.training
    assert all(p.grad is None for p in ctx.teacher.parameters())
    assert list(method.trainable_parameters()) == []


def test_dml_simultaneous_gives_every_peer_its_gradient(digits):
    method, ctx = prepare(digits, "dml", {"peers": 3, "update": "simultaneous"})
    assert len(method.peer_models) == 2
    trainable = {id(p) for p in method.trainable_parameters()}
    assert all(id(p) in trainable for p in method.peer_models.parameters())
    terms = method.train_step(ctx, first_batch(ctx))
    assert set(terms) == {"ce", "kl", "peer_ce", "peer_kl"}
    sum(terms.values()).backward()
    for model in (ctx.student, *method.peer_models):
        grads = [p.grad for p in model.parameters()]
        assert all(g is not None for g in grads)
        assert sum(g.abs().sum() for g in grads) > 0


def test_dml_alternating_steps_the_peers_before_the_student(digits):
    method, ctx = prepare(digits, "dml")
    peer_before = snapshot(method.peer_models[0])
    terms = method.train_step(ctx, first_batch(ctx))
    assert changed(peer_before, method.peer_models[0])  # stepped inside train_step
    assert list(method.trainable_parameters()) == []
    sum(terms.values()).backward()
    assert all(p.grad is not None for p in ctx.student.parameters())
    assert terms["kl"] > 0


def test_takd_trains_an_assistant_and_records_the_chain(digits):
    method, ctx = prepare(digits, "takd", {"assistant": "test_vgg"})
    _, fresh_ctx = prepare(digits, "takd", {"assistant": "none"})
    untrained, _ = fresh_ctx.create_model("test_vgg")  # same seed, same initial weights
    assert method.chain == (TEACHER, "test_vgg", STUDENT)
    assert changed(snapshot(untrained), method.assistant_model)
    method.train()
    assert not method.assistant_model.training
    assert list(method.trainable_parameters()) == []
    history = train_loop(ctx, method, evaluate_val=False)
    assert finite_history(history)


class NaNImages:
    """The first ``n`` samples of a training split with every image NaN and every label no
    class at all."""

    def __init__(self, split: TensorSplit, n: int) -> None:
        self.split, self.n = split, n

    def __len__(self) -> int:
        return self.n

    def batches(self, batch_size: int, **kwargs):
        batches = self.split.batches(batch_size, **kwargs)
        for _, (x, y, index) in zip(range(self.n // batch_size), batches, strict=False):
            yield torch.full_like(x, float("nan")), torch.full_like(y, 10**6), index


def test_data_free_never_reads_the_training_images(digits):
    # two steps of 16 (the generator is the costly part on a CPU)
    method, ctx = prepare(digits, "data_free", batch=16)
    ctx.data = dataclasses.replace(digits, train=NaNImages(digits.train, 32))
    ctx.task = dataclasses.replace(ctx.task, num_train=32, steps_per_epoch=2)
    teacher_before, generator_before = snapshot(ctx.teacher), snapshot(method.generator)
    student_before = snapshot(ctx.student)
    history = train_loop(ctx, method, evaluate_val=False)
    assert finite_history(history)
    assert changed(generator_before, method.generator)
    assert changed(student_before, ctx.student)
    assert not changed(teacher_before, ctx.teacher)


def test_multi_teacher_disjoint_obtains_one_teacher_per_class_group(digits):
    method, ctx = prepare(
        digits, "multi_teacher", {"teachers": ("test_resnet_narrow",), "label_sets": "disjoint"}
    )
    assert method.groups == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    assert len(method.teacher_models) == 2
    x = first_batch(ctx).x
    for model in method.teacher_models:
        assert model(x).shape == (BATCH, 5)
    method.train()
    assert not any(m.training for m in method.teacher_models)
    targets = method.targets(ctx, x)
    assert torch.allclose(targets.sum(dim=1), torch.ones(BATCH))
    terms = method.train_step(ctx, first_batch(ctx))
    assert all(torch.isfinite(v) for v in terms.values())


def test_byot_heads_train_with_the_student(digits):
    method, ctx = prepare(digits, "byot")
    assert len(method.heads) == 2  # stages 1 and 2 of the stem + three-stage ResNet
    trainable = {id(p) for p in method.trainable_parameters()}
    assert all(id(p) in trainable for p in method.heads.parameters())
    terms = method.train_step(ctx, first_batch(ctx))
    assert set(terms) == {"ce", "ce_heads", "kd", "hint"}
    sum(terms.values()).backward()
    assert all(p.grad is not None for p in method.heads.parameters())


def test_grafting_exchanges_weights_at_the_end_of_every_epoch(digits):
    method, ctx = prepare(digits, "grafting", epochs=2)
    rounds = []
    graft = method.graft
    method.graft = lambda student: (rounds.append(1), graft(student))
    history = train_loop(ctx, method, evaluate_val=False)
    assert finite_history(history)
    assert len(rounds) == 2
    # two networks come out of an exchange with the same weights
    peer = method.peer_models[0].state_dict()
    for key, value in ctx.student.state_dict().items():
        assert torch.allclose(value.float(), peer[key].float(), atol=1e-6), key
    assert method.lr_factors == [pytest.approx(0.5)]
