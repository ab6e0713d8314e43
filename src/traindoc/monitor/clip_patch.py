"""The patches traindoc puts on `torch.nn.utils.clip_grad_norm_` and ``clip_grads_with_norm_`` while a
run is watched.

The Tuning Playbook asks for the gradient norm *before* clipping and whether the user clipped. By the time
the optimizer's step hook runs, the gradients are already clipped, so the monitor learns both from
the clipping call itself: while at least one `traindoc.watch` is open, ``clip_grad_norm_`` is
replaced by a wrapper that

* computes the per-parameter gradient norms once with ``torch._foreach_norm`` (the same fused
  kernel torch uses), so the watch gets them for free instead of paying a second pass;
* clips exactly as torch does (``clip_grads_with_norm_``) and returns the same total norm;
* hands ``(params, per-gradient norms as one 1-d tensor, total, max_norm)`` to every open watch
  (a listener).

Code that computes the norm itself and then clips with ``torch.nn.utils.clip_grads_with_norm_`` (how
Accelerate's ``clip_grad_norm_``, and so the Hugging Face Trainer, clip since Accelerate 1.16) is seen
through a second wrapper: it clips with torch's function and hands the listeners the total norm the
caller computed (the pre-clip norm), with no per-gradient norms.

Anything unusual (``error_if_nonfinite=True``, a norm other than L2, gradients on several devices,
sparse gradients, an old torch) goes straight to torch's own function, and the listener gets the total
only. The original function is restored when the last watch closes. A module that did
``from torch.nn.utils import clip_grad_norm_`` *before* the watch started keeps its own reference
and is not seen (the monitor then records no clip threshold).

    >>> import torch
    >>> seen = []
    >>> remove = add_clip_listener(lambda params, norms, total, max_norm: seen.append(max_norm))
    >>> p = torch.nn.Parameter(torch.ones(4)); p.grad = torch.full((4,), 3.0)
    >>> float(torch.nn.utils.clip_grad_norm_([p], max_norm=1.0))  # the pre-clip norm, as torch returns
    6.0
    >>> remove(); seen, torch.nn.utils.clip_grad_norm_ is ORIGINAL_CLIP
    ([1.0], True)
"""

from __future__ import annotations

import contextlib
import functools
import threading
import traceback
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.utils as _nn_utils
import torch.nn.utils.clip_grad as _clip_module

ClipListener = Callable[[list[torch.Tensor], "torch.Tensor | None", torch.Tensor, Any], None]

ORIGINAL_CLIP = _clip_module.clip_grad_norm_
"""torch's own ``clip_grad_norm_`` (as found when traindoc was imported)."""

ORIGINAL_CLIP_WITH_NORM: Callable[..., None] | None = getattr(_nn_utils, "clip_grads_with_norm_", None)
"""torch's own ``clip_grads_with_norm_`` (torch >= 2.6; None before)."""

_lock = threading.Lock()
_listeners: list[ClipListener] = []
_installed_from: Callable[..., torch.Tensor] | None = None
_installed_with_norm_from: Callable[..., None] | None = None


def _fast_norms(params: list[torch.Tensor], norm_type: float, error_if_nonfinite: bool,
                ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Per-gradient L2 norms (one 1-d tensor, in the order of the parameters that have a gradient)
    and their total (torch's formula), or None when torch must do it. Nothing is checked per
    gradient in Python: gradients on several devices or sparse ones make the fused ops raise, and
    torch's own function takes over."""
    if error_if_nonfinite or float(norm_type) != 2.0 or not hasattr(_nn_utils, "clip_grads_with_norm_"):
        return None
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return None
    try:
        norms = torch.stack(torch._foreach_norm(grads, 2.0))
    except RuntimeError:
        return None
    total = torch.linalg.vector_norm(norms, 2.0)
    return norms, total


def _make_wrapper(original: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    @functools.wraps(original)
    def clip_grad_norm_(parameters: torch.Tensor | Iterable[torch.Tensor], max_norm: Any,
                        norm_type: float = 2.0, error_if_nonfinite: bool = False,
                        foreach: bool | None = None) -> torch.Tensor:
        listeners = list(_listeners)
        if not listeners:
            return original(parameters, max_norm, norm_type, error_if_nonfinite, foreach)
        params = [parameters] if isinstance(parameters, torch.Tensor) else list(parameters)
        prepared = None
        try:
            with torch.no_grad():
                prepared = _fast_norms(params, norm_type, error_if_nonfinite)
        except Exception:  # traindoc's own failure: fall back to torch, never break the user's clip
            _notify_error(listeners, traceback.format_exc())
            prepared = None
        if prepared is None:
            total = original(params, max_norm, norm_type, error_if_nonfinite, foreach)
            norms = None
        else:
            norms, total = prepared
            assert ORIGINAL_CLIP_WITH_NORM is not None  # `_fast_norms` returns None without it
            ORIGINAL_CLIP_WITH_NORM(params, max_norm, total, foreach)
        _notify(listeners, params, norms, total, max_norm)
        return total

    clip_grad_norm_.__traindoc_wrapper__ = True  # type: ignore[attr-defined]
    return clip_grad_norm_


def _make_with_norm_wrapper(original: Callable[..., None]) -> Callable[..., None]:
    @functools.wraps(original)
    def clip_grads_with_norm_(parameters: torch.Tensor | Iterable[torch.Tensor], max_norm: Any, total_norm: Any,
                              foreach: bool | None = None) -> None:
        listeners = list(_listeners)
        if not listeners:
            return original(parameters, max_norm, total_norm, foreach)
        params = [parameters] if isinstance(parameters, torch.Tensor) else list(parameters)
        original(params, max_norm, total_norm, foreach)
        total = total_norm if isinstance(total_norm, torch.Tensor) else torch.tensor(float(total_norm))
        _notify(listeners, params, None, total, max_norm)
        return None

    clip_grads_with_norm_.__traindoc_wrapper__ = True  # type: ignore[attr-defined]
    return clip_grads_with_norm_


def _notify(listeners: list[ClipListener], params: list[torch.Tensor], norms: torch.Tensor | None,
            total: torch.Tensor, max_norm: Any) -> None:
    """Hand a clipping to every listener; one that raises does not stop the others or the user's clip."""
    for listener in listeners:
        with contextlib.suppress(Exception):  # listeners guard themselves; last line of defence
            listener(params, norms, total, max_norm)


def _notify_error(listeners: list[ClipListener], text: str) -> None:
    for listener in listeners:
        on_error = getattr(listener, "on_error", None)
        if on_error is not None:
            with contextlib.suppress(Exception):
                on_error("clip_grad_norm_", text)


def add_clip_listener(listener: ClipListener) -> Callable[[], None]:
    """Start intercepting ``clip_grad_norm_`` and ``clip_grads_with_norm_`` (if not already) and return
    the function that stops."""
    global _installed_from, _installed_with_norm_from
    with _lock:
        if not _listeners:
            _installed_from = _nn_utils.clip_grad_norm_
            wrapper = _make_wrapper(_installed_from)
            _nn_utils.clip_grad_norm_ = wrapper
            _clip_module.clip_grad_norm_ = wrapper
            if ORIGINAL_CLIP_WITH_NORM is not None:
                _installed_with_norm_from = _nn_utils.clip_grads_with_norm_
                _nn_utils.clip_grads_with_norm_ = _make_with_norm_wrapper(_installed_with_norm_from)
        _listeners.append(listener)

    def remove() -> None:
        global _installed_from, _installed_with_norm_from
        with _lock:
            if listener in _listeners:
                _listeners.remove(listener)
            if not _listeners and _installed_from is not None:
                _nn_utils.clip_grad_norm_ = _installed_from
                _clip_module.clip_grad_norm_ = _installed_from
                _installed_from = None
                if _installed_with_norm_from is not None:
                    _nn_utils.clip_grads_with_norm_ = _installed_with_norm_from
                    _installed_with_norm_from = None

    return remove


def active_listeners() -> int:
    """How many watches are listening to ``clip_grad_norm_`` now (0 when nothing is patched)."""
    return len(_listeners)
