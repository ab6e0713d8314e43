"""TensorBoard event files for a watched run (``RUN_DIR/tb``), encoded and framed by traindoc itself
and written synchronously at flush time.

Tags::

    loss, grad_norm, clipped, nonfinite_grads, scaler_scale, tokens_per_s    scalars per step
    lr/group{i}                                                              LR of each param group
    metrics/{name}                                                           what the user logged
    layer_grad_norm/{layer}, layer_update_ratio/{layer}                      steps that are multiples of K
    weights/{layer}, grads/{layer}                                           histograms, same steps

``loss`` is written even when it is NaN or +-Inf (a diverged step must show); every other value only
when finite; ``clipped`` is 0 or 1; K is the writer's ``every``. The run directory keeps every step.

Neither ``torch.utils.tensorboard`` nor the ``tensorboard`` package is imported here: the package is
only the reader, and `tensorboard_available` (does it exist?) is the switch the watch uses.

**File.** ``logdir/events.out.tfevents.<int(time)>.<hostname>.<pid>.<n>``, a sequence of TFRecords::

    uint64 length (little-endian) | uint32 masked CRC-32C of those 8 bytes | data | uint32 masked CRC-32C of data

with ``masked(c) = (((c >> 15) | (c << 17)) + 0xA282EAD8) mod 2**32``. Each record's data is an ``Event``
protobuf, encoded here with `struct` and varints: Event {wall_time=1 double, step=2 int64,
file_version=3 string, summary=5 Summary}; Summary {value=1 repeated Value}; Value {tag=1 string,
simple_value=2 float, histo=5 HistogramProto}; HistogramProto {min=1, max=2, num=3, sum=4,
sum_squares=5 double; bucket_limit=6, bucket=7 packed double}. The first record is an Event with
file_version ``brain.Event:2`` (the reader then trusts step order as written and purges nothing).
One Event carries all the values of one step (scalars, layer scalars and histograms alike), split
into several Events of the same step where their Summary would pass `EVENT_BYTES`, so records stay
about 1 KiB long. A value's encoded prefix (field keys, tag, lengths) depends on its tag only and is
cached per tag; a scalar then costs one dict lookup and one 4-byte `struct` pack. Float32 overflow
(a finite double above 3.4e38) is written as +-Inf, as a float32 cast would.

**CRC-32C of a whole flush at once.** The reflected CRC-32C (Castagnoli, polynomial 0x82F63B78, table
T) updates its register by ``r <- T[(r ^ b) & 0xFF] ^ (r >> 8)``. T is linear over GF(2)
(``T[x ^ y] = T[x] ^ T[y]``), so one step is ``r <- S(r) ^ T[b]`` with ``S(r) = T[r & 0xFF] ^ (r >> 8)``
(the register shifted by one zero byte), and after n bytes b_0 .. b_{n-1}::

    r_n = S^n(0xFFFFFFFF)  XOR  (XOR over i of P[n-1-i][b_i]),    P[0] = T,  P[d+1] = S(P[d])

and the CRC is ``r_n ^ 0xFFFFFFFF``. A table of rows d = 0..N holds P[d] (256 columns, each row one
vectorised S of the row before) and Init[d] = S^d(0xFFFFFFFF) (a 257th column that follows the same
recursion). For all the records of a flush (each record's 8 length bytes and its data are two
inputs): concatenate their bytes, compute each byte's flat table index ``d * 257 + b`` (d its distance
to the end of its input) with one `numpy.repeat` and two in-place array operations, gather in one
`numpy.take`, and XOR each input's slice with `numpy.bitwise_xor.reduceat`; empty inputs give
Init[0] ^ 0xFFFFFFFF = 0. There is no per-byte Python work. The table grows on demand (by doubling)
up to `TABLE_CAP` + 1 rows (4 MiB, ~30 ms to build); the writer grows it to the event bound when it
opens (1,153 rows, 1.1 MiB, ~8 ms). An input longer than the cap (a histogram of more than ~250
bins) goes through `crc32c`, the plain table loop, which is also the reference the batch is tested
against (``crc32c(b"123456789") == 0xE3069283``).

**Cost**, measured on 2 shared CPU cores with torch.set_num_threads(1), CPU time of the whole process
(`time.process_time`, so a background thread's work counts), one flush = 50 steps of loss, grad_norm,
lr (and tokens_per_s once) plus 5 layer lines of 10 layers, file closed at the end, best of 10 runs:

    ========================================  =================  ==========================
    writer                                    CPU per step       where
    ========================================  =================  ==========================
    torch SummaryWriter on a worker thread    180 us (median     the worker, contending
                                              210-300 us)        with training for the GIL
    this module                               7 us (median 8.5)  the training thread
    ========================================  =================  ==========================

Of this module's ~360 us per flush, encoding the 251 values is ~245 us (~1 us each: a dict lookup of
the tag's prefix, a `finite` check, a 4-byte pack); framing the 50 events ~90 us, of which the
batched CRC over the 100 inputs (6.3 KB) is ~65 us where the per-byte loop takes ~1.4 ms (~10 ns
against ~180 ns per byte); the write and flush ~30 us. A 32-bin histogram adds ~28 us. One ``write``
and one ``flush`` per `TensorBoardWriter.submit` (no fsync); `TensorBoardWriter.close` fsyncs once.

    >>> hex(crc32c(b"123456789")), [hex(c) for c in crc32c_many([b"123456789", b""])]
    ('0xe3069283', ['0xe3069283', '0x0'])
"""

from __future__ import annotations

import itertools
import math
import os
import socket
import struct
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from traindoc.numbers import finite

SCALAR_KEYS = ("loss", "grad_norm", "nonfinite_grads", "scaler_scale", "tokens_per_s")
"""Scalars of a scalars line written under their own name (``loss`` even when not finite)."""

EVENT_BYTES = 1024
"""Values of one step are packed into one Event until its Summary would pass this many bytes."""

TABLE_CAP = 4096
"""Longest input (bytes) whose CRC the batch computes; longer ones go through the plain loop."""

_POLY = 0x82F63B78
_MASK_DELTA = 0xA282EAD8
_U32 = 0xFFFFFFFF


def _make_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ _POLY if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _make_table()


def crc32c(data: bytes) -> int:
    """CRC-32C of ``data`` by the plain table loop (one Python step per byte)."""
    table = _TABLE
    crc = _U32
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ _U32


class _ShiftTable:
    """Row d holds P[d][0..255] and Init[d] (column 256); rows are added on demand, up to TABLE_CAP."""

    def __init__(self) -> None:
        self.rows = np.empty((1, 257), np.uint32)
        self.rows[0, :256] = _TABLE
        self.rows[0, 256] = _U32

    def upto(self, n: int) -> np.ndarray:
        """The table with rows 0..n at least (n <= TABLE_CAP)."""
        rows = self.rows
        if len(rows) > n:
            return rows
        size = min(max(n + 1, 2 * len(rows)), TABLE_CAP + 1)
        grown = np.empty((size, 257), np.uint32)
        grown[:len(rows)] = rows
        t = grown[0, :256].copy()
        r = rows[-1].copy()
        for d in range(len(rows), size):
            r = t[r & 0xFF] ^ (r >> 8)
            grown[d] = r
        self.rows = grown  # one assignment: a reader sees the old table or the whole new one
        return grown


_SHIFTS = _ShiftTable()


def crc32c_many(chunks: Sequence[bytes]) -> np.ndarray:
    """CRC-32C of each of ``chunks`` (uint32 array), all at once with numpy (see the module docstring)."""
    n = len(chunks)
    lengths = np.fromiter(map(len, chunks), np.int64, n)
    out = np.empty(n, np.uint32)
    short: np.ndarray | None = None
    long = lengths > TABLE_CAP
    if long.any():
        for i in np.flatnonzero(long):
            out[i] = crc32c(chunks[i])
        short = np.flatnonzero(~long)
        chunks = [chunks[i] for i in short]
        lengths = lengths[short]
    if len(lengths) == 0:
        return out
    rows = _SHIFTS.upto(int(lengths.max()))
    ends = np.cumsum(lengths)
    total = int(ends[-1])
    xor = np.zeros(len(lengths), np.uint32)
    if total:
        # flat index of P[d, b] for every byte: d * 257 + b, d = distance to the end of its input
        dtype = np.int32 if total * 257 < 2**31 else np.int64
        index = np.repeat(((ends - 1) * 257).astype(dtype), lengths)
        index -= np.arange(0, total * 257, 257, dtype=dtype)
        index += np.frombuffer(b"".join(chunks), np.uint8)
        nonempty = np.flatnonzero(lengths)
        xor[nonempty] = np.bitwise_xor.reduceat(rows.ravel().take(index), (ends - lengths)[nonempty])
    crc = rows[lengths, 256] ^ xor ^ np.uint32(_U32)
    if short is None:
        return crc
    out[short] = crc
    return out


def masked(crcs: np.ndarray) -> np.ndarray:
    """TFRecord's masked CRC of each uint32."""
    crcs = crcs.astype(np.uint32)
    return ((crcs >> 15) | (crcs << 17)) + np.uint32(_MASK_DELTA)


def tfrecords(payloads: Sequence[bytes]) -> bytes:
    """The TFRecord framing of ``payloads``, every CRC computed in one `crc32c_many` call."""
    heads = [struct.pack("<Q", len(p)) for p in payloads]
    crcs = masked(crc32c_many([x for pair in zip(heads, payloads, strict=True) for x in pair]))
    crc_bytes = crcs.astype("<u4").tobytes()
    parts = []
    for i, (head, payload) in enumerate(zip(heads, payloads, strict=True)):
        parts += (head, crc_bytes[8 * i:8 * i + 4], payload, crc_bytes[8 * i + 4:8 * i + 8])
    return b"".join(parts)


def _varint(n: int) -> bytes:
    n &= 0xFFFFFFFFFFFFFFFF  # int64 fields: a negative value is its two's complement
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(key: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2) of field number ``key``."""
    return _varint(key << 3 | 2) + _varint(len(payload)) + payload


_pack_f32 = struct.Struct("<f").pack
_HISTO_HEAD = struct.Struct("<BdBdBdBdBd")  # min=1, max=2, num=3, sum=4, sum_squares=5 (wire type 1)


def _f32(v: float) -> bytes:
    try:
        return _pack_f32(v)
    except OverflowError:  # finite as a double, not as a float32
        return _pack_f32(math.inf if v > 0 else -math.inf)


def scalar_prefix(tag: str) -> bytes:
    """Summary.value field of a simple_value Value of ``tag``, all but its 4 float bytes."""
    t = tag.encode()
    inner = _varint(1 << 3 | 2) + _varint(len(t)) + t + b"\x15"  # tag=1, then simple_value=2 (fixed32)
    return b"\x0a" + _varint(len(inner) + 4) + inner


def histogram_value(tag: str, lo: float, hi: float, num: float, total: float, total_sq: float,
                    limits: Sequence[float], counts: Sequence[float]) -> bytes:
    """Summary.value field of a histo Value."""
    histo = (_HISTO_HEAD.pack(0x09, lo, 0x11, hi, 0x19, num, 0x21, total, 0x29, total_sq)
             + _field(6, struct.pack(f"<{len(limits)}d", *limits))
             + _field(7, struct.pack(f"<{len(counts)}d", *counts)))
    return _field(1, _field(1, tag.encode()) + _field(5, histo))


def file_version_event(wall_time: float) -> bytes:
    """The first Event of a file."""
    return b"\x09" + struct.pack("<d", wall_time) + _field(3, b"brain.Event:2")


def tensorboard_available() -> bool:
    """True when the ``tensorboard`` package (the reader of these files) is installed."""
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


_FILE_NUMBER = itertools.count()


class TensorBoardWriter:
    """Writes each flush's lines to one event file in ``logdir``, synchronously, one write per flush.

    ``every``: per-layer scalars and histograms are written for steps that are multiples of it.
    ``guard(where, fn, *args)`` runs ``fn``, recording (not raising) traindoc's own failures."""

    def __init__(self, logdir: str | Path, every: int, guard: Callable[..., Any]):
        logdir = Path(logdir)
        logdir.mkdir(parents=True, exist_ok=True)
        now = time.time()
        self.path = logdir / f"events.out.tfevents.{int(now)}.{socket.gethostname()}.{os.getpid()}.{next(_FILE_NUMBER)}"
        self.every = every
        self.guard = guard
        self._prefixes = _Prefixes()
        _SHIFTS.upto(min(EVENT_BYTES + 128, TABLE_CAP))  # the CRC table for bounded events, built now
        self._file = open(self.path, "wb")  # closed by close() or release  # noqa: SIM115
        self._append([file_version_event(now)])

    def submit(self, scalars: list[dict[str, Any]], layers: list[dict[str, Any]],
               histograms: list[dict[str, Any]]) -> None:
        """Write one flush: its scalars lines, and layer and histogram lines of multiples of ``every``."""
        self.guard("tensorboard", self._write, scalars, layers, histograms)

    def close(self) -> None:
        """Flush, fsync and close the file (a second call does nothing)."""
        f = self._file
        if f.closed:
            return
        try:
            f.flush()
            os.fsync(f.fileno())
        finally:
            f.close()

    @property
    def release(self) -> Callable[[], None]:
        """A function that closes the event file, holding neither this writer nor what its guard refers
        to (for a watch garbage-collected without ``close()``)."""
        f = self._file

        def release() -> None:
            f.close()

        return release

    # ------------------------------------------------------------------ encoding
    def _append(self, payloads: Sequence[bytes]) -> None:
        if payloads:
            self._file.write(tfrecords(payloads))
            self._file.flush()

    def _write(self, scalars: list[dict[str, Any]], layers: list[dict[str, Any]],
               histograms: list[dict[str, Any]]) -> None:
        k = self.every
        by_step: dict[int, list[bytes]] = {}  # steps in the order they come, each with all its values
        for rec in scalars:
            self._scalar_values(rec, by_step.setdefault(int(rec["step"]), []))
        for rec in layers:
            if rec["step"] % k == 0:
                self._layer_values(rec, by_step.setdefault(int(rec["step"]), []))
        for rec in histograms:
            if rec["step"] % k == 0 and (value := _histogram(rec)) is not None:
                by_step.setdefault(int(rec["step"]), []).append(value)
        head = b"\x09" + struct.pack("<d", time.time()) + b"\x10"  # wall_time, then the step's key
        events = []
        for step, values in by_step.items():
            start, size = 0, 0
            for i, v in enumerate(values):
                if size + len(v) > EVENT_BYTES and i > start:
                    events.append(_event(head, step, values[start:i]))
                    start, size = i, 0
                size += len(v)
            if len(values) > start:
                events.append(_event(head, step, values[start:]))
        self._append(events)

    def _scalar_values(self, rec: dict[str, Any], out: list[bytes]) -> None:
        prefixes = self._prefixes
        for key in SCALAR_KEYS:
            v = rec.get(key)
            if v is not None and (finite(v) or (key == "loss" and isinstance(v, float))):
                out.append(prefixes[key] + _f32(v))
        clipped = rec.get("clipped")
        if clipped is not None:
            out.append(prefixes["clipped"] + _f32(float(bool(clipped))))
        for i, lr in enumerate(rec.get("lr") or ()):
            if finite(lr):
                out.append(prefixes[f"lr/group{i}"] + _f32(lr))
        metrics = rec.get("metrics")
        if metrics:
            for name, v in metrics.items():
                if finite(v):
                    out.append(prefixes[f"metrics/{name}"] + _f32(v))

    def _layer_values(self, rec: dict[str, Any], out: list[bytes]) -> None:
        prefixes = self._prefixes
        for kind in ("grad_norm", "update_ratio"):
            for layer, v in (rec.get(kind) or {}).items():
                if finite(v):
                    out.append(prefixes[f"layer_{kind}/{layer}"] + _f32(v))


class _Prefixes(dict[str, bytes]):
    """`scalar_prefix` of each tag, computed on its first use."""

    def __missing__(self, tag: str) -> bytes:
        prefix = self[tag] = scalar_prefix(tag)
        return prefix


def _event(head: bytes, step: int, values: list[bytes]) -> bytes:
    """An Event: ``head`` (wall_time and the step's key), the step, a Summary of ``values``."""
    summary = b"".join(values)
    return head + _varint(step) + b"\x2a" + _varint(len(summary)) + summary


def _histogram(rec: dict[str, Any]) -> bytes | None:
    """The histo Value of a histograms line (bucket centers stand for the values), None when empty."""
    counts, edges = rec["counts"], rec["edges"]
    num = float(sum(counts))
    if num <= 0:
        return None
    centers = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:], strict=True)]
    total = sum(c * x for c, x in zip(counts, centers, strict=True))
    total_sq = sum(c * x * x for c, x in zip(counts, centers, strict=True))
    tag = ("weights/" if rec["kind"] == "weight" else "grads/") + rec["layer"]
    return histogram_value(tag, edges[0], edges[-1], num, total, total_sq, edges[1:], counts)
