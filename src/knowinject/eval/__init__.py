"""Stage 3, evaluation: answers and their scores, multiple choice, what a base model knows (knownness),
what the tiny model stored, attention to the subject, and the style classifier."""
