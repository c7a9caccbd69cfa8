"""What this machine has to train with, found without importing torch."""
from __future__ import annotations

import platform
import shutil
import subprocess
from dataclasses import dataclass

import psutil

GB = 1024 ** 3


@dataclass
class Machine:
    gpu: bool
    name: str                 # GPU name, or CPU model
    total_bytes: float        # GPU memory, or RAM
    available_bytes: float    # free GPU memory, or available RAM
    cores: int
    gpus: int = 0             # how many GPUs (a run may train on several: train.processes)

    def describe(self) -> str:
        """One line on what this machine has, in the page's language."""
        from .i18n import decimal, t

        sizes = dict(name=self.name, total=f"{self.total_bytes / GB:.0f}",
                     free=decimal(self.available_bytes / GB))
        if self.gpu:
            return t("machine.gpu", **sizes)
        return t("machine.cpu", cores=self.cores, **sizes)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "CPU"


def _nvidia_gpu() -> tuple[str, float, float, int] | None:
    """The first GPU's name, memory and free memory (bytes), and how many GPUs there are."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=name,memory.total,memory.free",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True,
                             timeout=5).stdout.strip().splitlines()
        name, total, free = [part.strip() for part in out[0].split(",")]
        return name, float(total) * 2**20, float(free) * 2**20, len(out)
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def detect_machine() -> Machine:
    gpu = _nvidia_gpu()
    cores = psutil.cpu_count(logical=True) or 1
    if gpu:
        return Machine(True, gpu[0], gpu[1], gpu[2], cores, gpu[3])
    mem = psutil.virtual_memory()
    return Machine(False, cpu_name(), float(mem.total), float(mem.available), cores)
