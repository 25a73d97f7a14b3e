"""The common mistakes of the chapters' exercises, each written out as the wrong answer it gives.

`exercises.check` runs them on the exercise's inputs: an answer whose output
matches one is told, in the learner's terms, which mistake it made, instead of
only that its values differ. One module per chapter, named as the chapter is
(`destroying_images` for chapter 01), so the next chapter adds a file rather
than growing one; in it, one dictionary per exercise, mapping the mistake, in
words, to a function with the exercise's arguments that makes it. A chapter
reads its own:

    from minidiff.course.mistakes import destroying_images as mistakes
    check(my_q_sample, corruption.q_sample, *inputs, solution=..., mistakes=mistakes.Q_SAMPLE)
"""
