"""Peer tools run on the gallery's cases: the same unmodified scripts, scored against the same ids.

    from benchmarks.gallery.peers import PEERS
    result = PEERS["torchtest2"].run(case.path, fixed=False, run_options=case.run_options, timeout=120)
    result.ids, result.step, result.line, result.error

Each peer runs the script in a subprocess under `benchmarks.gallery.peers._harness` (global hooks that
capture the losses, gradient norms, LRs and, for one-batch tools, the model, batch, loss and optimizer of
the first step), is fed what was captured the way its documentation says a user feeds it, and its
verdicts are mapped to catalog ids by a table in its module:

* ``torchtest2`` (`torchtest2_peer`): ``torchtest2.check_model`` on the first batch, before any update;
* ``gradsnitch`` (`gradsnitch_peer`): ``gradsnitch.watch(model, optimizer)`` + ``log()`` at every step;
* ``trainspotter`` (`trainspotter_peer`): ``trainspotter`` on the loss/LR/grad-norm log, as ``watch``;
* ``detect_anomaly`` (`anomaly_peer`): the whole script under ``torch.autograd.set_detect_anomaly(True)``.

A case whose ``run_options`` hold ``--nproc`` (torchrun) cannot be run by any of them: the result is an
error (a miss). ``python -m benchmarks.gallery.peers PEER CASE.py [--fixed]`` runs one peer on one case.
"""

from __future__ import annotations

from benchmarks.gallery.peers._base import DEFAULT_TIMEOUT, MULTIPROCESS, Peer, PeerResult
from benchmarks.gallery.peers.anomaly_peer import DetectAnomalyPeer
from benchmarks.gallery.peers.gradsnitch_peer import GradsnitchPeer
from benchmarks.gallery.peers.torchtest2_peer import TorchTest2Peer
from benchmarks.gallery.peers.trainspotter_peer import TrainspotterPeer

PEERS: dict[str, Peer] = {
    "torchtest2": TorchTest2Peer(),
    "gradsnitch": GradsnitchPeer(),
    "trainspotter": TrainspotterPeer(),
    "detect_anomaly": DetectAnomalyPeer(),
}

__all__ = ["DEFAULT_TIMEOUT", "MULTIPROCESS", "PEERS", "Peer", "PeerResult"]
