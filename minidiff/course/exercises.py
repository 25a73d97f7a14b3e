"""Checks for the chapters' exercises: is an answer right, and if not, how is it wrong?

Each exercise in a chapter has a student form, which raises
NotImplementedError("Exercise: ...") until the reader fills it in, and a
reference solution. `check` compares an answer with minidiff's own function
on the same inputs. While the student form is still unwritten, it checks the
reference solution instead (that is what CI runs), and says so.
"""

import numpy as np


def _compare(answer, expected, atol: float, rtol: float) -> str | None:
    """None if the outputs match, else a sentence saying how they differ."""
    answer, expected = np.asarray(answer), np.asarray(expected)
    if answer.shape != expected.shape:
        return f"the shape is {answer.shape}, expected {expected.shape}"
    if not np.all(np.isfinite(answer)):
        return "the answer contains NaN or infinite values"
    error = np.abs(answer - expected)
    if np.all(error <= atol + rtol * np.abs(expected)):
        return None
    worst = np.unravel_index(error.argmax(), error.shape)
    return (f"values differ, most at index {tuple(int(i) for i in worst)}: got {answer[worst]:.5g}, "
            f"expected {expected[worst]:.5g}")


def check(answer, reference, *args, solution=None, atol: float = 1e-4, rtol: float = 1e-4) -> bool:
    """Call answer(*args) and reference(*args) and compare; print a verdict, return True if right.

    If `answer` raises NotImplementedError and a `solution` is given, the
    solution is checked instead. A wrong solution raises AssertionError, so a
    broken chapter fails in CI.
    """
    expected = reference(*args)
    try:
        result = answer(*args)
        who = "your answer"
    except NotImplementedError as error:
        if solution is None:
            print(f"not attempted yet ({error})")
            return False
        print(f"not attempted yet ({error}); checking the reference solution instead")
        result, who = solution(*args), "the reference solution"
    if isinstance(expected, tuple):
        problems = [_compare(a, e, atol, rtol) for a, e in zip(result, expected)]
        problem = next((f"output {i}: {p}" for i, p in enumerate(problems) if p), None)
    else:
        problem = _compare(result, expected, atol, rtol)
    if problem is None:
        print(f"correct: {who} matches minidiff's {reference.__name__}")
        return True
    message = f"not quite: {who} differs from minidiff's {reference.__name__}: {problem}"
    if who == "the reference solution":
        raise AssertionError(message)
    print(message)
    return False
