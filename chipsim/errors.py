"""The one error type a user can cause, and how it reads.

Every problem in user input (a chip YAML, a run config, a workload file, a CSV of measurements)
raises :class:`InputError` naming the file, the key path inside it and what was expected. The CLI
turns it into one line on stderr and exit code 2; the library never prints.
"""

from __future__ import annotations


class InputError(Exception):
    """Bad user input: names the file, the key path and what was expected."""

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None) -> None:
        self.message = message
        self.file = file
        self.key = key
        super().__init__(str(self))

    def __str__(self) -> str:
        where = []
        if self.file:
            where.append(str(self.file))
        if self.key:
            where.append(f"key '{self.key}'")
        prefix = ": ".join(where)
        return f"{prefix}: {self.message}" if prefix else self.message

    def within(self, *, file: str | None = None, key_prefix: str | None = None) -> InputError:
        """The same error, located in a file and/or below a key path (filled in only if unknown)."""
        key = self.key
        if key_prefix:
            key = f"{key_prefix}.{key}" if key else key_prefix
        return InputError(self.message, file=self.file or file, key=key)
