"""Errors traindoc raises to the user (bad input); everything else is caught and reported."""

from __future__ import annotations


class TraindocInputError(ValueError):
    """Bad input to traindoc: the message names the argument to fix.

    >>> raise TraindocInputError("batch", "is empty (a tensor with 0 samples)")
    Traceback (most recent call last):
    ...
    traindoc.errors.TraindocInputError: batch: is empty (a tensor with 0 samples)
    """

    def __init__(self, argument: str, problem: str):
        self.argument = argument
        self.problem = problem
        super().__init__(f"{argument}: {problem}")
