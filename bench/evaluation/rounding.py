"""Rounding bounds of the exact search (:mod:`dmlbench.evaluation.exact_search`): the power-of-two
rescale that keeps every distance away from float32's underflow and overflow, the error of a
pair-by-pair float32 distance (which near-ties it cannot order), and the certificate that no
reference outside a row's candidates belongs in its list.

Error bounds are Higham's: an n-term float sum or dot product is within ``gamma_n = n u / (1 - n u)``
of the exact value relative to the sum of the terms' magnitudes, u the unit roundoff. Importing this
module never imports torch.
"""

from __future__ import annotations

import numpy as np

from dmlbench.core.errors import NonFiniteEmbeddingError

# Unit roundoff of float32, of TF32 and of bfloat16 (matrix products below "highest" precision), and
# the absolute error of a float32 operation among subnormals.
F32_UNIT = 2.0**-24
TF32_UNIT = 2.0**-11
BF16_UNIT = 2.0**-8
F32_TINY = 2.0**-149
# Embeddings whose largest coordinate lies in [2^LOW, 2^HIGH] are searched as they are; others are
# rescaled by a power of two into that window. Below it squared differences fall towards float32's
# subnormals (at 1e-20 a squared difference of 1e-27 is subnormal, at 1e-23 it is zero); above it
# |q|^2 + |r|^2 overflows (float32's largest is 3.4e38 = 2^128; 2^82 d stays below for any d under 2^46).
_LOW, _HIGH = 0, 40


def gamma(n: int, unit: float = F32_UNIT) -> float:
    """Higham's gamma_n: the relative error bound of an n-term float sum or dot product (infinite where
    n u reaches 1: bfloat16 products over a few hundred features bound nothing)."""
    return n * unit / (1 - n * unit) if n * unit < 1 else float("inf")


def scale_exponent(*arrays: np.ndarray) -> int:
    """The power of two ``e`` that brings the largest coordinate of ``arrays`` into the window, or 0.

    Multiplying by 2^e is exact in binary floating point (short of the subnormals, checked by
    :func:`rescale`), and every distance scales by 2^(2e): the order of every list is unchanged.
    """
    m = max((float(np.abs(a).max()) for a in arrays if a.size), default=0.0)
    if m == 0.0:
        return 0
    p = int(np.frexp(m)[1])            # m = f 2^p, f in [0.5, 1): m lies in [2^(p-1), 2^p)
    if p - 1 < _LOW:
        return _LOW - (p - 1)
    if p > _HIGH + 1:
        return _HIGH + 1 - p
    return 0


def rescale(x: np.ndarray, e: int, name: str) -> np.ndarray:
    """``x * 2^e`` as float32, refused in one line where scaling down would round a value (one so
    small next to the largest that it turns subnormal: the two differ by more than float32's range)."""
    if e == 0:
        return x
    out = np.ldexp(x, e).astype(np.float32, copy=False)
    if e < 0 and not np.array_equal(np.ldexp(out, -e).astype(np.float32, copy=False), x):
        raise NonFiniteEmbeddingError(
            f"{name} holds values from {np.abs(x[x != 0]).min():.3g} to {np.abs(x).max():.3g}: no float32 scale holds "
            f"both exactly, so its distances cannot be searched exactly; normalise the embeddings")
    return out


def pair_error(d32: np.ndarray, dim: int) -> np.ndarray:
    """A bound on |fl(D) - D| for a pair-by-pair float32 squared distance ``fl(D)`` (a sum of ``dim``
    squared differences: one rounding each for the difference, the square and the sum, so gamma_(d+3)
    relative, plus a few subnormal units), in terms of ``fl(D)`` itself."""
    g = gamma(dim + 3)
    tiny = 4 * (dim + 3) * F32_TINY
    return (g * d32.astype(np.float64) + tiny) / (1 - g)


def near_ties(d32: np.ndarray, dim: int) -> np.ndarray:
    """For rows sorted by float32 distance, ``out[:, j]``: neighbours j and j + 1 may be in either true
    order (their error intervals touch), so float32 cannot order them. Exact ties are near ties."""
    err = pair_error(d32, dim)
    return d32[:, 1:] - err[:, 1:] <= d32[:, :-1] + err[:, :-1]


def reach(kept_max: np.ndarray, q_norm: np.ndarray, dim: int, unit: float) -> np.ndarray:
    """The largest matrix-product estimate a reference could have and still belong in a row's list.

    ``kept_max`` bounds the float32 pair-by-pair distances of the row's kept neighbours, so ``T`` (its
    error added) bounds their true distances; ``q_norm`` is the query's norm after centring. The
    proposal's estimates are of the centred embeddings: centring rounds each coordinate by at most u
    of the centred value, which moves a distance's root by at most ``u'(|q_c| + |r_c|)``,
    ``|r_c| <= |q_c| + sqrt(D_c)``; so a reference with true distance at most T has a centred distance
    whose root is at most ``S = (sqrt(T) + 2u'|q_c|) / (1 - u')``. The estimate |q|^2 + |r|^2 - 2 q.r of a
    distance D_c is within ``gamma_(d+2) (|q_c| + |r_c|)^2 <= gamma_(d+2) (2|q_c| + sqrt(D_c))^2`` of it,
    whatever the summation order, plus a few subnormal units. A row is certain when every candidate
    left out has an estimate above this bound (strictly: a tie at the cut is never decided outside).
    """
    u = F32_UNIT / (1 - F32_UNIT)
    t = kept_max.astype(np.float64)
    t = t + pair_error(t, dim)
    qn = q_norm * (1 + 1e-12)               # the norm itself was summed in float64
    s = (np.sqrt(t) + 2 * u * qn) / (1 - u)
    tiny = 4 * (dim + 2) * F32_TINY
    return s * s + gamma(dim + 2, unit) * (2 * qn + s) ** 2 + tiny
