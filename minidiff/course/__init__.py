"""What the chapters use beside the library.

    chapters.py   each chapter's settings in smoke and full mode; the models chapters share
    exercises.py  checks that say whether an exercise's answer is right, and how it is wrong
    mistakes.py   each exercise's common mistakes, written out as the wrong answers they give
    grading.py    the student copy of the chapters, and the grader of a class's notebooks
    sandbox.py    the guard that keeps a graded notebook's writes inside its own folder
    oracles.py    a denoiser whose answer is known in closed form, for checking samplers
"""
