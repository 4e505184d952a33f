"""Generate native/_small_means.py: fedavg's weighted mean unrolled for 8 and 12 rows.

The weighted sum of the rows is written out as one expression per column, so every row
streams through the core at once and the float64 sums stay in vector registers. The general
kernel (native/_pool.py) sums 4 rows at a time into a float64 block buffer: each group
starts its rows' streams again at every block. At P=10M, side by side in one process
(docs/performance.md), one pass (padded as below) was up to 5-9 % faster for 5 to 12 rows
when this machine's memory is slow, and 9 % (10 rows) and 17 % (12 rows) faster when it is
fast; a 16-row kernel was 8-12 % slower at 16 rows (too many streams at once), so more than
12 rows take the general kernel.

Two widths only: the caller pads 5-11 rows up to the next with row 0 at weight 0 (0 * x
adds an exact zero, and a repeated row is read from L1). One kernel per N would compile a
kernel for each (about 0.6 s each on first use with an empty cache, for every user of the
helper pool: 10 s more for N <= 16); these two cost about 1 s. The generated module is
committed (numba's on-disk cache needs a real source file); regenerate with

    python tools/gen_small_means.py > native/_small_means.py
"""

from __future__ import annotations

import sys

from _generated import numba_module_header  # tools/, this script's directory

WIDTHS = (8, 12)


def tree(terms: list[str]) -> str:
    """The terms summed as a balanced tree (pairs first): the order the kernels add in."""
    if len(terms) == 1:
        return terms[0]
    half = (len(terms) + 1) // 2
    return f"({tree(terms[:half])} + {tree(terms[half:])})"


def kernel(n: int) -> list[str]:
    out = [
        "",
        "",
        "@njit(cache=True, nogil=True, fastmath=FASTMATH)",
        f"def mean_{n}(out, addresses, weights, size, start, stop):",
    ]
    out += [f"    x{i} = _row(addresses, {i}, size)[start:stop]" for i in range(n)]
    out += [f"    w{i} = weights[{i}]" for i in range(n)]
    out += [
        "    o = out[start:stop]",
        "    for t in range(stop - start):",
        f"        o[t] = np.float32({tree([f'w{i} * x{i}[t]' for i in range(n)])})",
    ]
    return out


def main() -> None:
    summary = [
        f"fedavg's weighted mean of {' or '.join(map(str, WIDTHS))} float32 rows, unrolled: out[start:stop] =",
        "the float64 sum of weights[i] * row i, rounded once. The caller pads fewer rows with",
        "row 0 at weight 0 (see native/_kernels.py for ``_row``, native/_pool.py for the caller).",
    ]
    lines = [*numba_module_header("gen_small_means.py", summary, "FASTMATH, _row"), f"WIDTHS = {WIDTHS}"]
    for n in WIDTHS:
        lines += kernel(n)
    lines += [
        "",
        "",
        "@njit(cache=True, nogil=True)",
        "def mean_of_width(n, out, addresses, weights, size, start, stop):",
        '    """The kernel for n rows over [start, stop), if n is one of WIDTHS; False if not."""',
    ]
    for i, n in enumerate(WIDTHS):
        lines += [
            f"    {'if' if i == 0 else 'elif'} n == {n}:",
            f"        mean_{n}(out, addresses, weights, size, start, stop)",
        ]
    lines += ["    else:", "        return False", "    return True", ""]
    sys.stdout.write("\n".join(lines))


if __name__ == "__main__":
    main()
