"""GPU epoch: images/s and seconds per CIFAR-100-sized epoch of KD training through kdbench's
loop, the projected wall time of a 240-epoch run, and the aggregate throughput of 1, 2 and 4
trials packed on one device (one process each, started together).

Defaults are the issue's: resnet56 -> resnet20 and resnet32x4 -> resnet8x4, vanilla KD, batch
64, augmentation on (random crop with padding 4 and flips, on the device), bf16 autocast and
channels-last on CUDA. Targets on one H100-class GPU: a 240-epoch resnet56 -> resnet20 KD run
in under 5 minutes; 4 packed trials at least 2x the throughput of one. The epoch projection
is training steps only (a validation pass adds about a tenth of an epoch's forward work).

On a CPU it runs the same code at whatever size the flags give, e.g. the test's
``--pairs test_resnet_wide:test_resnet_narrow --data-n 128 --steps 2 --packs 1,2``.

    python benchmarks/gpu_epoch.py [--pairs T:S,...] [--steps 50] [--packs 1,2,4] [--json out]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time
from queue import Empty

import _synthetic as syn
import torch

from bench.config import Recipe

CIFAR100_TRAIN = 50_000


def build(args, teacher: str, student: str, device: torch.device):
    data = syn.synthetic_bundle(args.data_n, device, classes=100)
    recipe = Recipe(
        epochs=args.epochs, batch_size=args.batch_size, augment=True, compile=args.compile
    )
    return syn.kd_context(data, student, teacher, "kd", recipe, device)


def images_per_second(ctx, method, steps: int, batch_size: int, device: torch.device) -> float:
    from bench.trial.loop import train_loop

    syn.synchronize(device)
    started = time.perf_counter()
    train_loop(ctx, method, evaluate_val=False, max_steps=steps)
    syn.synchronize(device)
    return steps * batch_size / (time.perf_counter() - started)


def _packed_worker(args, pair, device_name, threads, barrier, queue) -> None:
    torch.set_num_threads(threads)
    device = torch.device(device_name)
    ctx, method = build(args, *pair, device)
    images_per_second(ctx, method, args.warmup, args.batch_size, device)
    barrier.wait()
    started = time.time()
    images_per_second(ctx, method, args.steps, args.batch_size, device)
    queue.put((started, time.time()))


def packed_throughput(args, pair, device: torch.device, count: int) -> float:
    """Aggregate images/s of ``count`` identical trials running at once on ``device``, one
    fresh (spawned) process each, timed from the first start to the last end after a
    common barrier."""
    context = mp.get_context("spawn")
    threads = max(1, torch.get_num_threads() // count) if device.type == "cpu" else 1
    barrier, queue = context.Barrier(count), context.Queue()
    workers = [
        context.Process(
            target=_packed_worker, args=(args, pair, str(device), threads, barrier, queue)
        )
        for _ in range(count)
    ]
    for worker in workers:
        worker.start()
    spans = []
    deadline = time.monotonic() + args.timeout
    while len(spans) < count:
        try:
            spans.append(queue.get(timeout=1.0))
        except Empty:
            failed = [w.exitcode for w in workers if w.exitcode not in (None, 0)]
            if failed or time.monotonic() > deadline:
                for worker in workers:
                    worker.kill()
                raise RuntimeError(
                    f"packed trials did not finish (exit codes {failed}, timeout "
                    f"{args.timeout:.0f} s)"
                ) from None
    for worker in workers:
        worker.join()
    wall = max(end for _, end in spans) - min(start for start, _ in spans)
    return count * args.steps * args.batch_size / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--pairs",
        default="resnet56:resnet20,resnet32x4:resnet8x4",
        help="teacher:student pairs, comma-separated",
    )
    parser.add_argument(
        "--epoch-size",
        type=int,
        default=CIFAR100_TRAIN,
        help="images per projected epoch (CIFAR-100: 50000)",
    )
    parser.add_argument(
        "--data-n", type=int, default=10_000, help="synthetic images held on the device"
    )
    parser.add_argument("--epochs", type=int, default=240, help="epochs of the projected run")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=50, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--packs", default="1,2,4", help="numbers of packed trials to time")
    parser.add_argument("--compile", action="store_true", help="torch.compile the models")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--timeout", type=float, default=600.0, help="per packed run, seconds")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()
    device = syn.pick_device(args.device)
    pairs = [tuple(p.split(":")) for p in args.pairs.split(",") if p]
    packs = [int(k) for k in args.packs.split(",") if k]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"KD on {name}, batch {args.batch_size}, {args.steps} timed steps, augmentation on the "
        f"device{', compiled' if args.compile else ''}"
    )
    report: dict = {"device": name, "batch_size": args.batch_size, "pairs": [], "packing": {}}
    for teacher, student in pairs:
        ctx, method = build(args, teacher, student, device)
        images_per_second(ctx, method, args.warmup, args.batch_size, device)
        ips = images_per_second(ctx, method, args.steps, args.batch_size, device)
        epoch = args.epoch_size / ips
        run = epoch * args.epochs
        print(
            f"{teacher} -> {student}: {ips:9.1f} img/s, {epoch:8.1f} s per {args.epoch_size}-"
            f"image epoch, {args.epochs} epochs projected {run / 60:8.1f} min"
        )
        report["pairs"].append(
            {
                "teacher": teacher,
                "student": student,
                "images_per_second": ips,
                "epoch_seconds": epoch,
                "projected_run_minutes": run / 60,
            }
        )
    single = None
    for count in packs:
        ips = packed_throughput(args, pairs[0], device, count)
        single = single or ips
        report["packing"][str(count)] = {"images_per_second": ips, "speedup": ips / single}
        print(
            f"{count} packed {pairs[0][0]} -> {pairs[0][1]} trials: {ips:9.1f} img/s aggregate, "
            f"{ips / single:.2f}x one trial"
        )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=1)


if __name__ == "__main__":
    main()
