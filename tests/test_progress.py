"""Progress written anywhere but a terminal (a log, a CI run): a plain line every few seconds, none of a bar's
carriage-return redraws."""

from minidiff.machinery.progress import Progress


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_off_a_terminal_progress_prints_a_line_every_few_seconds_and_one_at_the_end(capsys):
    clock = FakeClock()
    shown = Progress(300, "training", every=10.0, clock=clock)
    for step in range(1, 36):  # one update a second for 35 seconds
        clock.now = float(step)
        shown.update(step, loss=0.5)
    shown.close()
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["training: 10/300 step (3 %), loss=0.5", "training: 20/300 step (7 %), loss=0.5",
                     "training: 30/300 step (10 %), loss=0.5", "training: 35/300 step (12 %), loss=0.5"]
    assert "\r" not in "".join(lines)


def test_disabled_progress_prints_nothing(capsys):
    shown = Progress(10, "training", enabled=False)
    shown.update(5)
    shown.close()
    assert capsys.readouterr().err == ""
