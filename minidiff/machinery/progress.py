"""Progress: a bar on a terminal, a line every few seconds anywhere else.

A progress bar redraws itself with carriage returns, many times a second. On a
terminal that is what one wants; written to a log file or a CI run, it becomes
one endless line of updates. So where standard error is not a terminal,
`Progress` prints a plain line instead, at most every `every` seconds and once
at the end: `training: 120/300 s (40 %), step=530, loss=0.0312`.
"""

import sys
import time

from tqdm.auto import tqdm


class Progress:
    """Progress through `total` units (steps, seconds of a budget, batches...), shown as `desc`."""

    def __init__(self, total: int, desc: str, unit: str = "step", initial: int = 0, enabled: bool = True,
                 every: float = 10.0, clock=time.monotonic):
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.enabled, self.every, self.clock = enabled, every, clock
        self.postfix: dict = {}
        self.bar = None
        if enabled and sys.stderr.isatty():
            bar_format = "{l_bar}{bar}| {n}/{total} s{postfix}" if unit == "s" else None
            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, bar_format=bar_format)
        self.last_line = clock()

    def update(self, n: int, **postfix) -> None:
        """Move to `n` units done, showing `postfix` (name=value) beside the count."""
        self.n, self.postfix = n, postfix
        if self.bar is not None:
            self.bar.update(n - self.bar.n)
            self.bar.set_postfix(**postfix, refresh=False)
        elif self.enabled and self.clock() - self.last_line >= self.every:
            self._print_line()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            self._print_line()

    def _print_line(self) -> None:
        done = f" ({100 * self.n / self.total:.0f} %)" if self.total else ""
        extra = "".join(f", {name}={value}" for name, value in self.postfix.items())
        print(f"{self.desc}: {self.n}/{self.total} {self.unit}{done}{extra}", file=sys.stderr, flush=True)
        self.last_line = self.clock()


def progress(iterable, desc: str, total: int | None = None, unit: str = "batch", enabled: bool = True):
    """`iterable`, its progress shown as it is consumed (`Progress`)."""
    total = len(iterable) if total is None else total
    shown = Progress(total, desc, unit=unit, enabled=enabled)
    try:
        for count, item in enumerate(iterable, 1):
            yield item
            shown.update(count)
    finally:
        shown.close()
