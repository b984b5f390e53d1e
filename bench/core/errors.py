"""User-facing errors.

Every problem a user can fix (a missing file, a misspelled option, a corrupt download) raises
:class:`DMLBenchError` with a one-line message that names the problem and the fix. The CLI prints
it without a traceback and exits non-zero; anything else is a bug and keeps its traceback.
"""


class DMLBenchError(Exception):
    """A problem with the user's input, reported as one line."""


class NonFiniteLossError(DMLBenchError):
    """A loss term became NaN or inf during training."""


class NonFiniteEmbeddingError(DMLBenchError, ValueError):
    """Embeddings handed to the evaluation hold NaN or inf values."""


def exception_line(e: BaseException, limit: int = 160) -> str:
    """``Type: first line of the message``, cut at a word to about ``limit`` characters: what a one-line
    error quotes of an exception raised by a user's code."""
    first = (str(e).strip().splitlines() or [""])[0]
    if len(first) > limit:
        first = first[:limit].rsplit(" ", 1)[0] + " ..."
    return f"{type(e).__name__}: {first}" if first else type(e).__name__
