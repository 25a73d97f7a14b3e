"""Checks for the chapters' exercises: is an answer right, and if not, how is it wrong?

An exercise in a chapter has a student form, `my_...`, which raises
NotImplementedError("Exercise: ...") until the reader fills it in, and a
reference solution, `..._solution`, which the student copy of the course leaves
out (`minidiff course student-copy`, `grading.py`). Two kinds of check:

    check(my_q_sample, corruption.q_sample, *inputs, solution=q_sample_solution,
          mistakes=mistakes.Q_SAMPLE)
    check_below(my_training_run, 0.5, solution=training_run_solution, what="the final loss")

`check` calls the answer and the reference (minidiff's own function, or a
closed form) on the same inputs and compares. When they differ it says how in
the learner's terms: first the exercise's common mistakes (`mistakes.py`),
each a wrong answer recognised by its output, then what any formula can get
wrong (a flipped sign, a factor off, a constant added, a wrong shape).
`check_below` is for exercises that need a run: the answer returns a number
(a loss, say) that must come out below a bound.

While the student form is still unwritten, a check runs the reference solution
instead (that is what CI does) and says so; a reference solution that fails
its check raises AssertionError, so a broken chapter fails in CI.

Every verdict is also appended, as one JSON line, to the file that
$MINIDIFF_VERDICTS names, if set: that is how the grader (`grading.py`) learns
what each exercise of a submitted notebook came to.
"""

import json
import os

import numpy as np

VERDICTS_FILE = "MINIDIFF_VERDICTS"  # the environment variable the grader sets


def record(exercise: str, verdict: str, reason: str = "") -> None:
    """Append one exercise's verdict (correct, wrong, not attempted, error) for the grader, if it asked."""
    path = os.environ.get(VERDICTS_FILE)
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"exercise": exercise, "verdict": verdict, "reason": reason}) + "\n")


def _close(answer, expected, atol: float, rtol: float) -> bool:
    return answer.shape == expected.shape and bool(np.all(np.abs(answer - expected) <= atol + rtol * np.abs(expected)))


def _as_arrays(result) -> tuple[np.ndarray, ...]:
    """An output, or a tuple of outputs, as a tuple of float64 arrays."""
    parts = result if isinstance(result, tuple) else (result,)
    return tuple(np.asarray(part, dtype=np.float64) for part in parts)


def difference(answer, expected, atol: float = 1e-4, rtol: float = 1e-4) -> str | None:
    """None if `answer` matches `expected`, else what any formula could have got wrong, in words."""
    answer, expected = np.asarray(answer, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    if answer.shape != expected.shape:
        return f"the shape is {answer.shape}, expected {expected.shape}"
    if not np.all(np.isfinite(answer)):
        return "it contains NaN or infinite values (a division by zero, or the log or root of a negative number?)"
    if _close(answer, expected, atol, rtol):
        return None
    if np.any(np.abs(expected) > atol) and _close(-answer, expected, atol, rtol):
        return "it is the negative of the right answer: a sign is flipped"
    nonzero = np.abs(expected) > 1e-6
    if nonzero.sum() > 1:
        ratio = answer[nonzero] / expected[nonzero]
        if np.ptp(ratio) < 1e-4 * np.abs(ratio.mean()) and abs(ratio.mean() - 1) > rtol:
            return f"it is {ratio.mean():.4g} times the right answer everywhere: a factor is off"
    offset = answer - expected
    if answer.size > 1 and np.ptp(offset) < atol and abs(offset.mean()) > atol:
        return f"it is the right answer plus {offset.mean():.4g} everywhere: a term is off by a constant"
    error = np.abs(answer - expected)
    worst = np.unravel_index(error.argmax(), error.shape)
    return (f"values differ, most at index {tuple(int(i) for i in worst)}: got {answer[worst]:.5g}, "
            f"expected {expected[worst]:.5g}")


def diagnose(result, expected, wrong_outputs: dict, atol: float = 1e-4, rtol: float = 1e-4) -> str | None:
    """None if `result` matches `expected` (outputs or tuples of them); else the common mistake whose
    output it matches, by name, or else `difference`'s description."""
    result, expected = _as_arrays(result), _as_arrays(expected)
    if len(result) != len(expected):
        return f"it returns {len(result)} outputs, expected {len(expected)}"
    problems = [difference(r, e, atol, rtol) for r, e in zip(result, expected)]
    if not any(problems):
        return None
    for mistake, wrong in wrong_outputs.items():
        wrong = _as_arrays(wrong)
        if len(wrong) == len(result) and not any(difference(r, w, atol, rtol) for r, w in zip(result, wrong)):
            return f"a common mistake: {mistake}"
    if len(problems) == 1:
        return problems[0]
    return next(f"output {i}: {p}" for i, p in enumerate(problems) if p)


def _attempt(answer, args, solution, exercise: str):
    """(output, who) from the answer, or from the solution while the answer is unwritten; (None, None)
    when there is nothing to check (the answer unwritten and no solution, or the answer raising)."""
    try:
        return answer(*args), "your answer"
    except NotImplementedError as error:
        if solution is None:
            print(f"not attempted yet ({error})")
            record(exercise, "not attempted")
            return None, None
        print(f"not attempted yet ({error}); checking the reference solution instead")
        record(exercise, "not attempted", "the reference solution was checked instead")
        return solution(*args), "the reference solution"
    except Exception as error:  # the learner's code failed: say how, and let the notebook go on
        reason = f"your answer raised {type(error).__name__}: {error}"
        print(reason)
        record(exercise, "error", reason)
        return None, None


def _verdict(exercise: str, who: str, problem: str | None, right: str, wrong: str) -> bool:
    """Print the verdict, and record the learner's: `right` and `wrong` finish the sentence about `who`."""
    if problem is None:
        print(f"correct: {who} {right}")
        if who == "your answer":
            record(exercise, "correct")
        return True
    message = f"not quite: {who} {wrong}: {problem}"
    if who == "the reference solution":
        raise AssertionError(message)
    print(message)
    record(exercise, "wrong", problem)
    return False


def _check_mistakes_are_told_apart(expected, wrong_outputs: dict, atol: float, rtol: float) -> None:
    """In CI, where the reference solutions run: each common mistake must be recognised as itself on the
    exercise's inputs, neither taken for the right answer nor for another mistake."""
    for mistake, wrong in wrong_outputs.items():
        told = diagnose(wrong, expected, wrong_outputs, atol, rtol)
        if told != f"a common mistake: {mistake}":
            raise AssertionError(f"the inputs of this exercise do not reveal the mistake {mistake!r}: "
                                 f"it is diagnosed as {told!r}")


def check(answer, reference, *args, solution=None, mistakes: dict | None = None, atol: float = 1e-4,
          rtol: float = 1e-4) -> bool:
    """Call answer(*args) and reference(*args) and compare; print a verdict, return True if right.

    `mistakes` maps a common mistake, in words, to a function that makes it
    (same arguments as the answer): an answer whose output matches one is told
    which mistake it made.
    """
    exercise = answer.__name__
    result, who = _attempt(answer, args, solution, exercise)
    if who is None:
        return False
    expected = reference(*args)
    wrong_outputs = {name: wrong(*args) for name, wrong in (mistakes or {}).items()}
    if who == "the reference solution":
        _check_mistakes_are_told_apart(expected, wrong_outputs, atol, rtol)
    problem = diagnose(result, expected, wrong_outputs, atol, rtol)
    name = f"minidiff's {reference.__name__}"
    return _verdict(exercise, who, problem, f"matches {name}", f"differs from {name}")


def check_below(answer, bound: float, *args, solution=None, what: str = "the result") -> bool:
    """For an exercise that needs a run: answer(*args) returns a number that must be below `bound`."""
    exercise = answer.__name__
    result, who = _attempt(answer, args, solution, exercise)
    if who is None:
        return False
    value = float(result)
    problem = None if value < bound else f"{what} is {value:.4g}, not below {bound:g}"
    if np.isnan(value):
        problem = f"{what} is NaN: the run diverged (a learning rate too high?)"
    return _verdict(exercise, who, problem, f"reaches the goal, {what} below {bound:g} ({value:.4g})",
                    "misses the goal")
