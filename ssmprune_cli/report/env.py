"""What a measurement ran on: enough to tell two benchmark results apart, nothing personal (no host or user name)."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import sys
from importlib import metadata
from typing import Any, Dict, Optional

import torch

import ssmprune_cli


def package_version(name: str) -> Optional[str]:
    """Installed version without importing the package (importing triton on a CPU machine is slow and noisy)."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: Optional[torch.device] = None, dtype: str = "fp32", compiled: bool = False
                ) -> Dict[str, Any]:
    """A JSON-ready record of the software, the machine and the settings a measurement used."""
    device = torch.device("cpu") if device is None else torch.device(device)
    env: Dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "ssmprune": ssmprune_cli.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "triton": package_version("triton"),
        "fvcore": package_version("fvcore"),
        "cuda": torch.version.cuda,
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "dtype": dtype,
        "autocast": dtype == "bf16",
        "compile": compiled,
        "scan_backend": _scan_backend(device),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        env.update({
            "gpu": props.name,
            "gpu_count": torch.cuda.device_count(),
            "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "compute_capability": f"{props.major}.{props.minor}",
            "cudnn": torch.backends.cudnn.version(),
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
            "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        })
    return env


def _scan_backend(device: torch.device) -> str:
    from ssmprune_cli.ops.selective_scan import current_backend

    name = current_backend()
    if name == "auto":
        return "triton" if device.type == "cuda" else "reference (chunked PyTorch)"
    return name


def describe(env: Dict[str, Any]) -> str:
    """One line for people: machine, software and settings."""
    where = env.get("gpu") or env.get("cpu")
    soft = f"torch {env['torch']}" + (f", triton {env['triton']}" if env.get("triton") else "") + \
           (f", CUDA {env['cuda']}" if env.get("cuda") and env.get("gpu") else "")
    how = f"{env['dtype']}{' (autocast)' if env.get('autocast') else ''}" + (", compiled" if env.get("compile") else "")
    return f"{where} · {soft} · {how} · scan {env['scan_backend']} · {env['date']}"
