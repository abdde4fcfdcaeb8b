"""Peak memory of a trial: the process's resident set (CPU) and the CUDA caching allocator's
peak allocation, measured between :meth:`PeakMemory.start` and :meth:`PeakMemory.read`.

On Linux the resident-set high-water mark (``VmHWM``) is reset at the start by writing ``5``
to ``/proc/self/clear_refs``, so a worker process that runs many trials reports each trial's
own peak. Where that is not possible the figure is the process's peak so far (an upper bound),
and ``rss_reset`` says so.
"""

from __future__ import annotations

import resource
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["MemoryPeak", "PeakMemory", "current_rss_bytes", "peak_rss_bytes"]

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_bytes(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # reported in kB
    except OSError:
        return None
    return None


def current_rss_bytes() -> int:
    """The process's resident set now (0 where the platform does not say)."""
    return _status_bytes("VmRSS") or 0


def peak_rss_bytes() -> int:
    """The process's resident-set high-water mark (since the last reset, on Linux)."""
    peak = _status_bytes("VmHWM")
    if peak is not None:
        return peak
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return usage if sys.platform == "darwin" else usage * 1024  # bytes on macOS, kB elsewhere


def _reset_rss_peak() -> bool:
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


@dataclass(frozen=True)
class MemoryPeak:
    """Peak memory of a measured stretch, in bytes.

    Attributes:
        rss: Peak resident set of the process.
        gpu_allocated: Peak bytes held by tensors on the CUDA device (0 without CUDA).
        gpu_reserved: Peak bytes the CUDA caching allocator reserved (0 without CUDA).
        rss_reset: Whether the resident-set peak was reset at the start (else it is the
            process's peak so far).
    """

    rss: int
    gpu_allocated: int = 0
    gpu_reserved: int = 0
    rss_reset: bool = True

    def metrics(self) -> dict[str, float]:
        """MLflow metrics in MiB: ``peak_rss_mb`` and, with CUDA, ``peak_gpu_allocated_mb``
        and ``peak_gpu_reserved_mb``."""
        out = {"peak_rss_mb": self.rss / 2**20}
        if self.gpu_reserved:
            out["peak_gpu_allocated_mb"] = self.gpu_allocated / 2**20
            out["peak_gpu_reserved_mb"] = self.gpu_reserved / 2**20
        return out


class PeakMemory:
    """Measures peak memory from :meth:`start` to :meth:`read` on ``device``."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self._reset = False

    def start(self) -> PeakMemory:
        self._reset = _reset_rss_peak()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def read(self) -> MemoryPeak:
        gpu_allocated = gpu_reserved = 0
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            gpu_allocated = torch.cuda.max_memory_allocated(self.device)
            gpu_reserved = torch.cuda.max_memory_reserved(self.device)
        return MemoryPeak(peak_rss_bytes(), gpu_allocated, gpu_reserved, self._reset)
