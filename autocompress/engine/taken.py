"""Policies a study's trials trained or are training, in this process or any other.

Budget filling maps many proposals to one edge point, and a proposal whose edge point
was judged (trained, or timed on the target) walks to a neighbour no trial has (:mod:`autocompress.engine.fill`). With one
process, what it trained is enough to know. With several processes on one study (``autocompress
worker`` on PostgreSQL, or ``autocompress search --storage URL`` started twice), a process
knowing only its own trials trains the edge points the others trained, and two workers
filling at the same moment take the same one. So a trial *claims* its policy in the storage
before it is fine-tuned (the ``policy_claim`` user attribute, a digest of the policy's
layers), and every process reads the study's claims before it fills: a policy another
trial trained or is training is not new. Ray trials share one actor for this instead
(:class:`autocompress.engine.ray_backend.TakenPoliciesActor`).

Reading and claiming are two storage calls, not one transaction: two workers that fill in
the same few milliseconds can still both take a point. That costs one duplicate fine-tune,
never a wrong result.

>>> import optuna
>>> study = optuna.create_study()
>>> taken = TakenPolicies(study)
>>> trial = study.ask()
>>> policy = {"layers": {"fc": {"rank": 0.5}}}
>>> taken.is_new(policy)
True
>>> taken.claim(policy, trial)
>>> other = TakenPolicies(study)  # another process sees the claim
>>> other.is_new(policy)
False
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from autocompress.engine.journal import set_user_attrs
from autocompress.engine.record import DONE, judged

CLAIM_ATTR = "policy_claim"
REPEAT_ATTR = "repeat_of"


def policy_digest(policy: dict[str, Any]) -> str:
    """A policy's identity: a short, stable hash of its layers (a policy's ``to_dict()``), what
    two evaluations of one policy share and what a claim stores.

    >>> policy_digest({"layers": {"a": {"bits": 8}}}) == policy_digest({"layers": {"a": {"bits": 8}}})
    True
    """
    layers = json.dumps(policy.get("layers", {}), sort_keys=True)
    return hashlib.sha256(layers.encode()).hexdigest()[:20]


def trained(trial: FrozenTrial) -> bool:
    """A finished trial that judged its policy: fine-tuned and scored it, or timed it on the
    target and found it over the budget (a told repeat did neither)."""
    return (trial.state in DONE and judged(trial.user_attrs)
            and REPEAT_ATTR not in trial.user_attrs
            and isinstance(trial.user_attrs.get("policy"), dict))


class TakenPolicies:
    """The study's trained policies (by digest, with the trial that trained each) and claims.

    :meth:`refresh` reads the study (one ``get_trials``); :meth:`is_new` and
    :meth:`earlier` answer from what was read; :meth:`claim` writes a trial's claim.
    """

    def __init__(self, study: optuna.Study) -> None:
        self.study = study
        self.trained: dict[str, FrozenTrial] = {}
        self.claimed: set[str] = set()
        self._finished_claims: set[str] = set()
        self._read: set[int] = set()  # finished trials already read (their attributes are final)
        self.refresh()

    def refresh(self) -> list[FrozenTrial]:
        """Read the trials finished or running in the study now, whichever process ran them;
        returns the finished trials read for the first time.

        A claim holds while its trial runs or once it finished; a failed trial's claim
        lapses, so the retry of a dead worker's trial may train that policy.
        """
        running: set[str] = set()
        new: list[FrozenTrial] = []
        for t in self.study.get_trials(deepcopy=False, states=(*DONE, TrialState.RUNNING)):
            if t.number in self._read:
                continue
            claim = t.user_attrs.get(CLAIM_ATTR)
            if t.state == TrialState.RUNNING:
                if claim:
                    running.add(str(claim))
                continue
            self._read.add(t.number)
            new.append(t)
            if claim:
                self._finished_claims.add(str(claim))
            if trained(t):
                self.trained.setdefault(policy_digest(t.user_attrs["policy"]), t)
        self.claimed = self._finished_claims | running
        return new

    def is_new(self, policy: dict[str, Any]) -> bool:
        """Whether no trial trained ``policy`` (a ``to_dict()``) or claimed it."""
        digest = policy_digest(policy)
        return digest not in self.trained and digest not in self.claimed

    def earlier(self, policy: dict[str, Any]) -> FrozenTrial | None:
        """The finished trial that trained ``policy``, if one did."""
        return self.trained.get(policy_digest(policy))

    def claim(self, policy: dict[str, Any], trial: Any = None) -> None:
        """Record in the storage that ``trial`` (an :class:`optuna.Trial`) judges ``policy``."""
        digest = policy_digest(policy)
        set_user_attrs(trial, {CLAIM_ATTR: digest})
        self.claimed.add(digest)

    def add(self, trial: FrozenTrial) -> None:
        """A trial this process just finished (known without reading the study again)."""
        if trained(trial):
            self.trained.setdefault(policy_digest(trial.user_attrs["policy"]), trial)
