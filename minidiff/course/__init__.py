"""What the chapters use beside the library.

    chapters.py   each chapter's settings in smoke and full mode; the models chapters share
    exercises.py  checks that say whether an exercise's answer is right, and how it is wrong
    oracles.py    a denoiser whose answer is known in closed form, for checking samplers
"""
