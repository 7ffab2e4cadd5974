"""Which precision a model computes in: ``auto`` picks bfloat16 only where the hardware computes it natively.

``mixed_bfloat16`` (bfloat16 compute, float32 weights and softmax) trained 2.1x faster than float32 on a
CPU with native bfloat16 (AVX512-BF16 / AMX) and on Ampere-or-newer GPUs, but on a CPU without those
instructions every bfloat16 operation is emulated: on an AMD EPYC with AVX2 only it trained the reference
CNN about 8x *slower* than float32 (``benchmarks/bench_input.py --precision``). ``auto`` (the default)
resolves to ``mixed_bfloat16`` on a GPU of compute capability 8.0 or newer or a CPU that reports
``avx512_bf16`` or ``amx_bf16``, and to ``float32`` otherwise.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

log = logging.getLogger(__name__)

AUTO = "auto"
#: CPU flags (``/proc/cpuinfo``) of native bfloat16 arithmetic.
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The first CPU's feature flags (empty where ``/proc/cpuinfo`` does not exist, e.g. macOS)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


@functools.lru_cache(maxsize=1)
def native_bfloat16() -> tuple[bool, str]:
    """Whether this machine computes bfloat16 natively, and the sentence saying why (cached)."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        capability = tf.config.experimental.get_device_details(gpus[0]).get("compute_capability")
        if capability is not None and tuple(capability) >= (8, 0):
            return True, f"GPU of compute capability {capability[0]}.{capability[1]} (bfloat16 tensor cores)"
        return False, f"GPU of compute capability {capability} (no bfloat16 tensor cores before 8.0)"
    found = sorted(cpu_flags() & BF16_CPU_FLAGS)
    if found:
        return True, f"CPU with {' and '.join(found)}"
    return False, "CPU without avx512_bf16 or amx_bf16 (bfloat16 would be emulated, several times slower)"


def resolve_precision(precision: str) -> str:
    """``precision`` with ``auto`` replaced by ``mixed_bfloat16`` or ``float32`` for this machine."""
    if precision != AUTO:
        return precision
    native, why = native_bfloat16()
    resolved = "mixed_bfloat16" if native else "float32"
    log.debug("precision auto -> %s: %s", resolved, why)
    return resolved
