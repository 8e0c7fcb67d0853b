"""The compiled CPU kernel of the experts pass (``csrc/experts_cpu.cpp``), built on first use.

On a CPU, :class:`subnets.experts.layer.Experts` runs its gather, experts and combine through this kernel
when it can be built: the same ATen operators as the Python loop in ``layer.py``, in the same runs and
order (bit-identical results), but run by OpenMP threads, one expert per thread, without the interpreter
and lock overhead the loop pays about twenty times per expert. The router's top-k selection of float32
scores also runs here. It is compiled once per torch and Python version (about 30 s, with the C++ compiler
and ninja that torch's extension builder needs) into ``$SUBNETS_KERNELS`` (default
``~/.cache/subnets/kernels``); when it cannot be built, a warning says why and the Python loop is used.
``SUBNETS_EXPERTS_KERNEL=python`` turns the kernel off.
"""

from __future__ import annotations

import os
import platform
import sys
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import torch

SOURCE = Path(__file__).with_name("csrc") / "experts_cpu.cpp"
SWITCH = "SUBNETS_EXPERTS_KERNEL"
_LOCK = threading.Lock()
_loaded: dict[str, ModuleType | None] = {}
_UNSET = object()


def build_directory() -> Path:
    """Where the kernel is compiled: one folder per torch version, Python version and machine type."""
    root = Path(os.environ.get("SUBNETS_KERNELS") or Path.home() / ".cache" / "subnets" / "kernels")
    python = f"py{sys.version_info.major}{sys.version_info.minor}"
    return root / f"torch-{torch.__version__.replace('+', '_')}-{python}-{platform.machine()}"


def enabled() -> bool:
    """Whether the kernel may be used (``SUBNETS_EXPERTS_KERNEL`` is not ``python``)."""
    value = os.environ.get(SWITCH, "").strip().lower()
    if value not in ("", "python", "compiled"):
        raise ValueError(f"{SWITCH} must be 'python' or 'compiled', got {os.environ[SWITCH]!r}")
    return value != "python"


def kernel() -> ModuleType | None:
    """The compiled kernel, building it on first use; None when it is switched off or cannot be built."""
    if not enabled():
        return None
    with _LOCK:
        if "module" not in _loaded:
            _loaded["module"] = _build()
        return _loaded["module"]


@contextmanager
def using(module: ModuleType) -> Iterator[None]:
    """Runs the experts through ``module`` (a build of another version of the source, from
    :func:`compile_source`) instead of this kernel inside the block: for benchmarks that compare kernel
    versions in one process."""
    with _LOCK:
        before = _loaded.get("module", _UNSET)
        _loaded["module"] = module
    try:
        yield
    finally:
        with _LOCK:
            if before is _UNSET:
                _loaded.pop("module", None)
            else:
                _loaded["module"] = before


def compile_source(source: Path, name: str, folder: Path) -> ModuleType:
    """Compiles the kernel ``source`` as extension ``name`` in ``folder`` (torch's extension builder, with the
    PyPI ninja's folder on PATH) and loads it; raises if it cannot."""
    from torch.utils.cpp_extension import load

    path = os.environ.get("PATH")
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["PATH"] = os.pathsep.join([*_ninja_folder(), *([path] if path else [])])
    try:
        return load(name=name, sources=[str(source)], build_directory=str(folder), extra_cflags=["-O3", "-fopenmp"],
                    extra_ldflags=["-fopenmp"], verbose=False)
    finally:
        if path is None:
            os.environ.pop("PATH", None)
        else:
            os.environ["PATH"] = path


def _build() -> ModuleType | None:
    try:
        folder = build_directory()
        if not (folder.is_dir() and any(folder.glob("*.so"))):
            print(f"subnets: compiling the CPU experts kernel into {folder} (once, about 30 s)", file=sys.stderr)
        return compile_source(SOURCE, "subnets_experts_cpu", folder)
    except Exception as error:  # no compiler, no ninja, an unwritable cache: the Python loop still works
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        warnings.warn(f"subnets: the CPU experts kernel could not be built ({reason}); using the Python loop. "
                      f"Set {SWITCH}=python to skip trying.", RuntimeWarning, stacklevel=3)
        return None


def _ninja_folder() -> list[str]:
    """The folder of the PyPI ninja package's binary, which torch's builder looks for on PATH (none if absent)."""
    try:
        import ninja
    except ImportError:
        return []
    folder = getattr(ninja, "BIN_DIR", None)
    return [folder] if folder else []
