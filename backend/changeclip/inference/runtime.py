"""Which inference runtime runs the network, and the CPU runtimes' sessions.

``torch`` runs the network in PyTorch (every device, fp32/bf16/fp16). ``onnxruntime`` and
``openvino`` run the exported ONNX graph (:mod:`changeclip.inference.onnx_export`) on the CPU, in
fp32 or, with ``--precision int8``, as a statically quantised graph (:mod:`changeclip.inference.int8`).
The text encoder always stays in PyTorch: its output is cached per prompt string.

``auto`` takes the fastest path measured for the device (docs/benchmarks.md, "CPU runtimes"):

* a GPU: ``torch``;
* the CPU in fp32: :data:`CPU_FP32_ORDER`'s first installed runtime for the backbone;
* the CPU in bf16 (asked for with ``--precision bf16``): :data:`CPU_BF16_RUNTIME`;
* ``int8`` is never chosen by ``auto``; asked for, it runs on :data:`CPU_INT8_ORDER`'s first runtime.

A runtime that is missing or fails (import, export, load) makes the run fall back to torch with a
warning saying why and what it costs: the engine never changes silently.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from changeclip.errors import InputError

log = logging.getLogger(__name__)

RUNTIMES = ("auto", "torch", "onnxruntime", "openvino")
CPU_RUNTIMES = ("onnxruntime", "openvino")

CPU_FP32_ORDER = {"rn50": ("openvino", "onnxruntime"), "vit": ("onnxruntime", "openvino")}
"""The CPU fp32 runtimes per backbone, fastest first, as measured (docs/benchmarks.md): OpenVINO
ahead on RN50 in both interleaved runs, ONNX Runtime ahead on ViT-B/16."""

CPU_BF16_RUNTIME = "openvino"
"""What ``auto`` runs bf16 with on a CPU with native bf16 (measured faster than torch's autocast)."""

CPU_INT8_ORDER = ("openvino", "onnxruntime")
"""The int8 runtimes, fastest first, as measured."""

FALLBACK_COST = ("PyTorch fp32 measured 1.2-1.4x slower end to end than the optimised runtimes' fp32 on an idle "
                 "2-core CPU (docs/benchmarks.md, CPU runtimes, idle re-run)")

_MODULES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}

_openvino_core: Any = None
_openvino_core_lock = threading.Lock()


def openvino_core() -> Any:
    """The process's one ``openvino.Core``, made on first use and kept until the process exits.

    One Core, not one per session: every Core creates its own CPU plugin, and the plugin
    (OpenVINO 2026.4, ``create_plugin_engine``) installs a fresh signal stack (``sigaltstack``) on
    the thread that compiles and, when it is destroyed, puts back the stack it found and unmaps its
    own. Two plugins destroyed in the order they were made leave the thread on an unmapped stack,
    and the next signal it takes (Ctrl-C, SIGTERM from the plugin's cancel, a data worker's
    SIGCHLD) kills the process with SIGSEGV instead of running the handler. One Core that lives as
    long as the process makes one plugin, whose stack stays mapped; OpenVINO's own advice is one
    Core per application anyway (the plugin caches what it compiled).
    """
    global _openvino_core
    with _openvino_core_lock:
        if _openvino_core is None:
            import openvino as ov

            _openvino_core = ov.Core()
        return _openvino_core


def runtime_version(name: str) -> str:
    """The installed version of a CPU runtime.

    Raises:
        ImportError: Not installed, or it fails to import (the message says which).
    """
    module = importlib.import_module(_MODULES[name])
    version = getattr(module, "__version__", None)
    if version is None and name == "openvino":
        version = module.get_version()
    return str(version).split("-")[0]


def runtime_status() -> dict[str, str | None]:
    """``{runtime: version or None}`` for the CPU runtimes (for ``/v1/status`` and the bench)."""
    out: dict[str, str | None] = {}
    for name in CPU_RUNTIMES:
        try:
            out[name] = runtime_version(name)
        except Exception:  # a broken install is as good as a missing one here
            out[name] = None
    return out


def physical_cores() -> int:
    """Physical CPU cores (not hyper-threads): the runtimes' intra-op thread count."""
    count = None
    try:
        import psutil

        count = psutil.cpu_count(logical=False)
    except Exception:  # psutil missing or /proc restricted
        count = None
    return max(1, int(count or os.cpu_count() or 1))


@dataclass
class RuntimeChoice:
    """The runtime and precision a run will use, and why.

    Attributes:
        runtime: ``torch``, ``onnxruntime`` or ``openvino``.
        precision: ``fp32``, ``bf16``, ``fp16`` or ``int8``.
        requested: The ``--runtime`` value asked for.
        reason: Why this runtime (for the log and summary.json).
    """

    runtime: str
    precision: str
    requested: str
    reason: str


def choose_runtime(requested: str, device: str, precision: str, native_bf16: bool,
                   backbone: str = "rn50") -> RuntimeChoice:
    """Resolve ``--runtime`` for a resolved device and precision (no runtime is imported yet).

    Args:
        requested: ``auto``, ``torch``, ``onnxruntime`` or ``openvino``.
        device: ``cpu`` or ``cuda:N``.
        precision: Resolved precision (``fp32``, ``bf16``, ``fp16``, ``int8``).
        native_bf16: Whether the CPU computes bf16 natively.
        backbone: ``rn50`` or ``vit`` (the fp32 order differs).

    Raises:
        InputError: An unknown runtime, a CPU runtime on a GPU, int8 with torch or on a GPU, or a
            precision the runtime does not run.
    """
    if requested not in RUNTIMES:
        raise InputError(f"runtime must be one of {', '.join(RUNTIMES)}, got {requested!r}")
    if device != "cpu":
        if precision == "int8":
            raise InputError("precision int8 runs on the CPU only (onnxruntime or openvino); use --device cpu, "
                             "or a GPU precision: auto, fp32, bf16, fp16")
        if requested in CPU_RUNTIMES:
            raise InputError(f"runtime {requested} runs on the CPU only, but the device is {device}; use "
                             "--device cpu, or --runtime torch (or auto) on the GPU")
        return RuntimeChoice("torch", precision, requested, "GPU: PyTorch")
    if requested == "torch":
        if precision == "int8":
            raise InputError("precision int8 needs --runtime onnxruntime or openvino (or auto); PyTorch runs "
                             "fp32 or bf16 on the CPU")
        return RuntimeChoice("torch", precision, requested, "asked for")
    if requested == "onnxruntime" and precision == "bf16":
        raise InputError("onnxruntime runs fp32 or int8 on the CPU, not bf16; use --runtime openvino or torch "
                         "for bf16")
    if requested in CPU_RUNTIMES:
        return RuntimeChoice(requested, precision, requested, "asked for")
    # auto
    if precision == "int8":
        return RuntimeChoice(_first_installed(CPU_INT8_ORDER), precision, requested,
                             "int8 asked for: the fastest installed int8 runtime")
    if precision == "bf16":
        if native_bf16:
            return RuntimeChoice(CPU_BF16_RUNTIME, precision, requested,
                                 "native bf16 CPU: OpenVINO bf16 measured faster than PyTorch bf16 autocast")
        return RuntimeChoice("torch", precision, requested, "bf16 without native support: PyTorch (emulated)")
    order = CPU_FP32_ORDER.get(backbone, CPU_FP32_ORDER["rn50"])
    return RuntimeChoice(_first_installed(order), precision, requested,
                         f"CPU fp32: the fastest installed optimised runtime for {backbone}")


def _first_installed(order: tuple[str, ...]) -> str:
    for name in order:
        try:
            runtime_version(name)
            return name
        except Exception:  # not installed or broken: try the next; the caller warns if none loads
            log.debug("runtime %s unavailable", name, exc_info=True)
    return order[0]  # loading it fails later with the import error, and the run falls back with a warning


class RuntimeSession:
    """One compiled graph: ``run(x, text_a, text_b) -> logits`` on numpy float32 arrays.

    Args:
        runtime: ``onnxruntime`` or ``openvino``.
        path: The ONNX file.
        precision: ``fp32``, ``bf16`` (openvino) or ``int8`` (a quantised graph: runs as stored).
        threads: Intra-op threads.

    Raises:
        ImportError: The runtime is not installed.
        RuntimeError: It failed to load the graph.
    """

    def __init__(self, runtime: str, path: str, precision: str, threads: int) -> None:
        self.runtime = runtime
        self.threads = threads
        self.path = path
        if runtime == "onnxruntime":
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            opts.log_severity_level = 3
            self._session: Any = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        elif runtime == "openvino":
            core = openvino_core()
            config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
                      # fp32 and int8 graphs keep fp32 for what is not quantised (OpenVINO would
                      # otherwise run it in bf16 on AMX CPUs); bf16 is asked for explicitly
                      "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32"}
            compiled = core.compile_model(core.read_model(path), "CPU", config)
            self._request: Any = compiled.create_infer_request()
        else:
            raise ValueError(f"not a CPU runtime: {runtime!r}")

    def run(self, x: np.ndarray, text_a: np.ndarray, text_b: np.ndarray) -> np.ndarray:
        """Logits (B, 2, H, W) float32 for ``x`` (B, 6, H, W) and text features (B, 2, D)."""
        feed = {"x": np.ascontiguousarray(x, dtype=np.float32),
                "text_a": np.ascontiguousarray(text_a, dtype=np.float32),
                "text_b": np.ascontiguousarray(text_b, dtype=np.float32)}
        if self.runtime == "onnxruntime":
            return np.asarray(self._session.run(None, feed)[0], dtype=np.float32)
        result = self._request.infer(feed)
        return np.array(result[0], dtype=np.float32)  # a copy: the request reuses its output buffer
