"""The exercises' checks: right answers pass, common mistakes are named, a broken chapter fails in CI;
and every chapter has its exercises, in a student form without the reference solutions."""

import json
import re

import jax
import jax.numpy as jnp
import nbformat
import pytest

from minidiff import corruption
from minidiff.course import exercises, grading
from minidiff.course.mistakes import destroying_images as mistakes
from minidiff.course.exercises import check, check_below, difference

INPUTS = (jax.random.normal(jax.random.key(0), (3, 4, 4, 3)), jnp.array([0.9, 0.5, 0.1]),
          jax.random.normal(jax.random.key(1), (3, 4, 4, 3)))


def q_sample_solution(x0, alpha_bar_t, eps):
    a = alpha_bar_t[:, None, None, None]
    return jnp.sqrt(a) * x0 + jnp.sqrt(1 - a) * eps


@pytest.fixture
def verdicts(tmp_path, monkeypatch):
    """The verdicts the checks record, as the grader reads them."""
    path = tmp_path / "verdicts.jsonl"
    monkeypatch.setenv(exercises.VERDICTS_FILE, str(path))
    return lambda: [json.loads(line) for line in path.read_text().splitlines()]


def test_a_right_answer_passes_and_each_common_mistake_is_named(capsys, verdicts):
    def my_q_sample(x0, alpha_bar_t, eps):
        return q_sample_solution(x0, alpha_bar_t, eps)

    assert check(my_q_sample, corruption.q_sample, *INPUTS, mistakes=mistakes.Q_SAMPLE)
    assert capsys.readouterr().out.startswith("correct: your answer matches minidiff's q_sample")
    for mistake, wrong in mistakes.Q_SAMPLE.items():
        def my_q_sample(x0, alpha_bar_t, eps, wrong=wrong):  # the learner's function, now making this mistake
            return wrong(x0, alpha_bar_t, eps)

        assert not check(my_q_sample, corruption.q_sample, *INPUTS, mistakes=mistakes.Q_SAMPLE)
        assert f"a common mistake: {mistake}" in capsys.readouterr().out
    assert [v["verdict"] for v in verdicts()] == ["correct", "wrong", "wrong"]
    assert all(v["exercise"] == "my_q_sample" for v in verdicts())


@pytest.mark.parametrize("wrong, said", [
    (lambda x: -x, "a sign is flipped"),
    (lambda x: 2 * x, "2 times the right answer"),
    (lambda x: x + 0.5, "plus 0.5 everywhere"),
    (lambda x: x[:, :2], "the shape is (3, 2, 4, 3), expected (3, 4, 4, 3)"),
    (lambda x: x.at[0, 0, 0, 0].set(jnp.nan), "NaN"),
    (lambda x: x.at[1, 2, 3, 0].add(1.0), "most at index (1, 2, 3, 0)"),
])
def test_what_any_formula_can_get_wrong_is_said_in_words(wrong, said):
    x = INPUTS[0]
    assert said in difference(wrong(x), x)
    assert difference(x, x) is None


def test_an_unwritten_answer_checks_the_solution_and_a_wrong_solution_fails_ci(capsys, verdicts):
    def my_q_sample(x0, alpha_bar_t, eps):
        raise NotImplementedError("Exercise: ...")

    assert check(my_q_sample, corruption.q_sample, *INPUTS, solution=q_sample_solution, mistakes=mistakes.Q_SAMPLE)
    assert "checking the reference solution instead" in capsys.readouterr().out
    assert verdicts() == [{"exercise": "my_q_sample", "verdict": "not attempted",  # for the grader: not the learner's
                           "reason": "the reference solution was checked instead"}]
    assert not check(my_q_sample, corruption.q_sample, *INPUTS)  # the student copy: no solution to fall back on
    assert verdicts()[-1]["verdict"] == "not attempted"
    with pytest.raises(AssertionError, match="the reference solution differs"):
        check(my_q_sample, corruption.q_sample, *INPUTS, solution=lambda x0, a, eps: x0)


def test_ci_fails_a_mistake_the_inputs_cannot_reveal():
    def my_q_sample(x0, alpha_bar_t, eps):
        raise NotImplementedError("Exercise: ...")

    at_zero_noise = (INPUTS[0], jnp.ones(3), INPUTS[2])  # alpha_bar = 1: both mistakes give x0, as does the answer
    with pytest.raises(AssertionError, match="do not reveal the mistake"):
        check(my_q_sample, corruption.q_sample, *at_zero_noise, solution=q_sample_solution, mistakes=mistakes.Q_SAMPLE)


def test_an_answer_that_raises_is_an_error_and_the_notebook_goes_on(capsys, verdicts):
    def my_q_sample(x0, alpha_bar_t, eps):
        return x0 * alpha_bar_t[:, None]  # (B, H, W, C) times (B, 1): shapes that do not broadcast

    assert not check(my_q_sample, corruption.q_sample, *INPUTS)
    assert "your answer raised" in capsys.readouterr().out
    assert verdicts()[-1]["verdict"] == "error"


def test_a_run_must_come_out_below_its_bound(capsys, verdicts):
    def my_final_loss(value):
        return value

    assert check_below(my_final_loss, 0.3, 0.25, what="the final loss")
    assert not check_below(my_final_loss, 0.3, 0.35, what="the final loss")
    assert "the final loss is 0.35, not below 0.3" in capsys.readouterr().out
    assert not check_below(my_final_loss, 0.3, float("nan"), what="the final loss")
    assert "diverged" in capsys.readouterr().out
    assert [v["verdict"] for v in verdicts()] == ["correct", "wrong", "wrong"]


def test_every_chapter_has_three_graded_exercises_and_its_student_copy_none_of_the_solutions(tmp_path):
    chapters = grading.chapter_notebooks(grading.default_chapters_dir())
    written = grading.write_student_copy(tmp_path)
    assert [p.name for p in written] == [p.name for p in chapters]
    for teacher, student in zip(chapters, written):
        teacher, student = nbformat.read(teacher, as_version=4), nbformat.read(student, as_version=4)
        nbformat.validate(student)
        names = grading.exercises_of(teacher)
        assert len(names) >= 3, (teacher, names)
        assert grading.exercises_of(student) == names
        solutions = [c.source for c in teacher.cells if "_solution(" in c.source and "def " in c.source]
        assert solutions  # the teacher's copy has them...
        for cell in student.cells:  # ... the student's has none, and still parses
            if cell.cell_type == "code":
                assert "solution=" not in cell.source and not re.search(r"def \w+_solution\(", cell.source)
                grading._parsed(cell.source)
                assert cell.outputs == []


def test_each_exercise_my_x_has_its_reference_solution_x_solution():
    for path in grading.chapter_notebooks(grading.default_chapters_dir()):
        notebook = nbformat.read(path, as_version=4)
        defined = {name for cell in notebook.cells if cell.cell_type == "code"
                   for name in re.findall(r"^def (\w+)\(", cell.source, flags=re.MULTILINE)}
        for name in grading.exercises_of(notebook):
            assert name.startswith("my_") and f"{name[3:]}_solution" in defined, (path.name, name)


def test_solutions_are_cut_by_their_syntax_not_their_text():
    cell = '''%matplotlib inline
from minidiff.course.exercises import check

def my_ddim_step(x):  # ᾱ in a comment: positions count bytes
    raise NotImplementedError("Exercise")

@staticmethod
def ddim_step_solution(x):
    return 2 * x


def reference(x):
    return 2 * x

check(my_ddim_step, reference, 1.0,
      solution=ddim_step_solution, mistakes={})
check(my_ddim_step, reference, 2.0, solution=ddim_step_solution)'''
    student = grading.without_solutions(cell)
    assert "ddim_step_solution" not in student and "@staticmethod" not in student
    assert "check(my_ddim_step, reference, 1.0, mistakes={})" in student
    assert "check(my_ddim_step, reference, 2.0)" in student
    assert student.startswith("%matplotlib inline") and "def reference(x):" in student
    with pytest.raises(ValueError, match="still used"):
        grading.without_solutions("def a_solution():\n    pass\nprint(a_solution)")
    assert grading.without_solutions("x = 1") == "x = 1"
