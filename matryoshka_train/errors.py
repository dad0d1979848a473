"""The errors a user can fix, and how they are shown.

Every problem a user can act on is raised as a :class:`UserError` holding one or more
:class:`Problem` lines: *where* (a YAML path such as ``training.learning_rate``, or a file and
row) and *what to do*. The CLI prints one line per problem and exits with code 2; nothing else
is caught, so a real bug still shows its traceback.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}" if self.where else self.message


class UserError(Exception):
    """A problem with the user's input (config, data, command line) rather than with our code."""

    exit_code = 2
    # with several processes, only the main one prints it (the others found the same problem)
    same_on_every_process = True

    def __init__(self, problems: list[Problem] | str, where: str = ""):
        if isinstance(problems, str):
            problems = [Problem(where, problems)]
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class ConfigError(UserError):
    """The YAML config (or a ``--set`` override) is invalid."""


class DataError(UserError):
    """A dataset cannot be read or does not fit what its loss or evaluator needs."""


class TrainingAborted(UserError):
    """Training stopped on purpose (NaN loss, interruption); the message says what was kept."""

    exit_code = 1
    same_on_every_process = False
