"""The fused first ConvNet block as a compiled CPU kernel (an XLA FFI custom call).

:mod:`kip._src.kernels.fused` computes ``Conv -> ABReLU -> AvgPool`` tile by tile in XLA, whose
CPU backend writes each tile's cosines, square roots and cotangents to memory between its loops
(see that module). ``csrc/abrelu_tile.cc`` computes the same sums one pooled ``x1`` cell at a
time: for each ``x2`` column the cosines of all ``window^2`` offsets are formed in registers
from one load of its patch, mapped (the same ``arccos`` polynomial below float64, ``std::acos``
in float64) and pooled into a row accumulator, so nothing larger than one row of pooled outputs
is written. The backward pass (``x1`` side) recomputes the cosines and accumulates the patch
cotangents in registers; the ``x2`` side is the ``x1`` side of the swapped problem, the kernel
being symmetric. Rows are split over the process's CPUs (threads that end with each call).

The source is compiled on first use with the system C++ compiler (``$CXX``, else ``g++`` or
``c++``; ``-O3 -march=native``) against jaxlib's FFI headers and cached under
``$KIP_CACHE_DIR`` (default ``~/.cache/kip``), keyed by the source, the flags, the compiler, the
jaxlib version and the CPU, so a cache shared between machines never loads code built for
another CPU. Without a compiler the engine keeps the XLA fused path and logs why once
(:func:`available`); ``KernelFn(native=False)`` selects that path explicitly.

Formulas (``c = <q1, q2>`` the patch cosine, :math:`\\theta = \\arccos c`,
:math:`D = s_2 \\pi - m \\theta`, :math:`t = c D`):

.. math::
   K_{ij} = \\sum_{u, v} r_{1u} r_{2v} (m \\sin\\theta + t), \\qquad
   \\Theta_{ij} = \\sum_{u, v} r_{1u} r_{2v} t,

as :func:`kip._src.kernels.fused._tile`, with the same clipping, snapping to :math:`\\pm 1` and
the same VJP (``D' = m / \\sin\\theta``, 0 at :math:`|c| = 1`).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import pathlib
import platform
import shutil
import subprocess
from typing import Optional

import jax
import numpy as np

from kip._src.kernels import fused

__all__ = ["abrelu_tile", "available", "build", "build_error"]

log = logging.getLogger(__name__)

_SOURCE = pathlib.Path(__file__).with_name("csrc") / "abrelu_tile.cc"
_FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fopenmp-simd", "-std=c++17", "-shared",
          "-fPIC", "-pthread", "-w")
_SYMBOLS = {
    ("forward", np.dtype(np.float32)): "KipAbreluTileForwardF32",
    ("forward", np.dtype(np.float64)): "KipAbreluTileForwardF64",
    ("backward", np.dtype(np.float32)): "KipAbreluTileBackwardF32",
    ("backward", np.dtype(np.float64)): "KipAbreluTileBackwardF64",
}
DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

_state: dict = {}  # "lib": the loaded library (kept alive), "error": why there is none


def _compiler() -> Optional[str]:
  for name in (os.environ.get("CXX"), "g++", "c++"):
    if name and shutil.which(name):
      return shutil.which(name)
  return None


def _cpu_id() -> str:
  """The CPU model and feature flags (what ``-march=native`` compiles for)."""
  try:
    lines = pathlib.Path("/proc/cpuinfo").read_text().splitlines()
  except OSError:
    return platform.processor() or platform.machine()
  keep = [l for l in lines if l.split(":")[0].strip() in ("model name", "flags", "Features")]
  return "\n".join(sorted(set(keep))) + platform.machine()


def _cache_dir() -> pathlib.Path:
  root = os.environ.get("KIP_CACHE_DIR")
  if root:
    return pathlib.Path(root)
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return pathlib.Path(base) / "kip"


def _library_path(cxx: str) -> pathlib.Path:
  import jaxlib  # noqa: PLC0415

  version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
  key = hashlib.sha256("\0".join([_SOURCE.read_text(), " ".join(_FLAGS), version,
                                  jaxlib.__version__, _cpu_id()]).encode()).hexdigest()[:16]
  return _cache_dir() / f"abrelu_tile-{key}.so"


def build() -> pathlib.Path:
  """Compiles ``csrc/abrelu_tile.cc`` into the cache (if not there yet) and returns its path.

  Raises:
    RuntimeError: no C++ compiler, or the compilation failed (its output is in the message).
  """
  cxx = _compiler()
  if cxx is None:
    raise RuntimeError("no C++ compiler found (set CXX, or install g++) to build kip's "
                       "native CPU kernel; KernelFn(native=False) uses the XLA path instead.")
  path = _library_path(cxx)
  if path.exists():
    return path
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(f".{os.getpid()}.tmp")
  cmd = [cxx, *_FLAGS, f"-I{jax.ffi.include_dir()}", str(_SOURCE), "-o", str(tmp)]
  log.info("building kip's native CPU kernel: %s", " ".join(cmd))
  done = subprocess.run(cmd, capture_output=True, text=True)
  if done.returncode != 0:
    tmp.unlink(missing_ok=True)
    raise RuntimeError(f"building kip's native CPU kernel failed ({' '.join(cmd)}):\n"
                       f"{done.stderr[-2000:]}")
  os.replace(tmp, path)  # atomic: concurrent builders (test workers) never see half a file
  return path


def _load() -> Optional[ctypes.CDLL]:
  if "lib" in _state or "error" in _state:
    return _state.get("lib")
  try:
    lib = ctypes.cdll.LoadLibrary(str(build()))
    for (kind, dtype), symbol in _SYMBOLS.items():
      jax.ffi.register_ffi_target(_target(kind, dtype), jax.ffi.pycapsule(getattr(lib, symbol)),
                                  platform="cpu")
  except (RuntimeError, OSError, AttributeError) as err:
    _state["error"] = str(err)
    log.warning("kip's native CPU kernel is unavailable, using the XLA fused path: %s", err)
    return None
  _state["lib"] = lib
  return lib


def available() -> bool:
  """Whether the native kernel is built and registered (builds it on the first call)."""
  return _load() is not None


def build_error() -> Optional[str]:
  """Why :func:`available` is false (``None`` when it is true or was not asked yet)."""
  return _state.get("error")


def _target(kind: str, dtype) -> str:
  return f"kip_abrelu_tile_{kind}_{np.dtype(dtype).name}"


def _call(kind: str, out_shapes, *args, s2: float, m: float):
  if _load() is None:
    raise RuntimeError(f"kip's native CPU kernel is unavailable: {build_error()}")
  dtype = args[0].dtype
  if np.dtype(dtype) not in DTYPES:
    raise TypeError(f"the native kernel takes float32 or float64, got {dtype}.")
  outs = tuple(jax.ShapeDtypeStruct(s, dtype) for s in out_shapes)
  return jax.ffi.ffi_call(_target(kind, dtype), outs, vmap_method="sequential")(
      *args, s2=np.float64(s2), m=np.float64(m))


def _varying_like(outs, *inputs):
  """Gives a custom call's outputs the ``shard_map`` varying axes of its inputs.

  ``ffi_call``'s outputs carry none, while a custom VJP must return each cotangent with its
  input's type (see :func:`kip._src.kernels.fused._same_varying_axes`; no-op outside one).
  """
  return fused._same_varying_axes(*outs, *inputs)[:len(outs)]


def _forward(q1, r1, q2, r2, s2, m):
  shape = (q1.shape[0], q1.shape[1], q2.shape[3])
  outs = _call("forward", (shape, shape), q1, r1, q2, r2, s2=s2, m=m)
  return _varying_like(outs, q1, r1, q2, r2)


def _backward(q1, r1, q2, r2, g_k, g_t, s2, m):
  outs = _call("backward", (q1.shape, r1.shape), q1, r1, q2, r2, g_k, g_t, s2=s2, m=m)
  return _varying_like(outs, q1, r1, q2, r2, g_k, g_t)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def abrelu_tile(q1, r1, q2, r2, s2: float, m: float):
  """Pooled NNGP and NTK sums of the first block, without the ``1 / (2 pi window^4)`` factor.

  Args:
    q1: ``(B, M1, U, P)`` unit patches of ``x1``: ``B`` independent blocks, ``M1`` pooled cells,
      ``U = window^2`` offsets inside a pooling window, ``P`` patch length.
    r1: ``(B, M1, U)`` their norms.
    q2: ``(B, V, P, M2)`` unit patches of ``x2``, ``V = window^2``.
    r2: ``(B, V, M2)`` their norms.
    s2: ``a^2 + b^2``.
    m: ``(a - b)^2``.

  Returns:
    ``(nngp, ntk)``, each ``(B, M1, M2)`` (see the module docstring).
  """
  return _forward(q1, r1, q2, r2, s2, m)


def _abrelu_tile_fwd(q1, r1, q2, r2, s2, m):
  values, wanted = fused._primals_and_wanted(q1, r1, q2, r2)
  return _forward(*values, s2, m), (values, wanted)


def _abrelu_tile_bwd(s2, m, res, cts):
  (q1, r1, q2, r2), (want1, want2) = res
  g_k, g_t = fused._dense_cotangents(cts)
  dq1 = dr1 = dq2 = dr2 = None
  if want1 is not None:
    dq1, dr1 = _backward(q1, r1, q2, r2, g_k, g_t, s2, m)
  if want2 is not None:  # the x1 side of the swapped problem: K(x2, x1) = K(x1, x2)^T
    dq2, dr2 = _backward(q2.transpose(0, 3, 1, 2), r2.transpose(0, 2, 1),
                         q1.transpose(0, 2, 3, 1), r1.transpose(0, 2, 1),
                         g_k.transpose(0, 2, 1), g_t.transpose(0, 2, 1), s2, m)
    dq2, dr2 = dq2.transpose(0, 2, 3, 1), dr2.transpose(0, 2, 1)
  return dq1, dr1, dq2, dr2


abrelu_tile.defvjp(_abrelu_tile_fwd, _abrelu_tile_bwd, symbolic_zeros=True)
