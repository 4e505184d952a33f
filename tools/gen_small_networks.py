"""Generate native/_small_networks.py: order-statistics kernels unrolled for small N.

For N <= 16 the comparator network of a median or trimmed mean is written out as
straight-line code on N scalars per column, so the values stay in vector registers
(16 columns per AVX-512 register) instead of going through a block buffer for every
compare-exchange: about 2x faster at N=10, P=10M (memory-bound, like fedavg). The
kernels are serial and ``nogil``; native/_workshare.py spreads blocks over threads. The
generated module is committed (numba's on-disk cache needs a real source file);
regenerate with

    python tools/gen_small_networks.py > native/_small_networks.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _generated import numba_module_header  # tools/, this script's directory

from native._networks import selection_network

MAX_N = 16
# Trimmed means are unrolled for k <= MAX_TRIM values cut per side (beta*N < 3); each
# kernel costs ~1 s of compile on first use, so the table is kept small.
MAX_TRIM = 2


def kernel(name: str, n: int, first: int, last: int, exact: frozenset[int]) -> list[str]:
    lo, hi = selection_network(n, exact)
    out = [
        "",
        "",
        "@njit(cache=True, nogil=True, fastmath=FASTMATH)",
        f"def {name}(stack, out, bad_rows, first_block, last_block):",
        "    size = stack.shape[1]",
        "    bits = stack.view(np.uint32)",
        "    for b in range(first_block, last_block):",
        "        start = b * BLOCK",
        "        stop = min(start + BLOCK, size)",
        "        length = stop - start",
        f"        for i in range({n}):",
        "            if _any_nonfinite(bits[i], start, stop):",
        "                bad_rows[i] = True",
    ]
    out += [f"        r{i} = stack[{i}, start:stop]" for i in range(n)]
    out += [
        "        o = out[start:stop]",
        "        for t in range(length):",
    ]
    out += [f"            v{i} = r{i}[t]" for i in range(n)]
    for a, b in zip(lo.tolist(), hi.tolist(), strict=True):
        out.append(f"            c = v{a} < v{b}")
        out.append(f"            v{a}, v{b} = (v{a} if c else v{b}), (v{b} if c else v{a})")
    terms = " + ".join(f"np.float64(v{i})" for i in range(first, last + 1))
    out.append(f"            o[t] = np.float32(({terms}) / {last - first + 1}.0)")
    return out


def main() -> None:
    summary = [
        f"Median and trimmed-mean kernels for N <= {MAX_N} with the comparator network unrolled",
        "(see native/_networks.py for the networks and native/_kernels.py for the conventions).",
    ]
    lines = [*numba_module_header("gen_small_networks.py", summary, "FASTMATH, _any_nonfinite"), "BLOCK = 1024"]
    table = []
    for n in range(2, MAX_N + 1):
        first, last = (n - 1) // 2, n // 2
        name = f"median_{n}"
        lines += kernel(name, n, first, last, frozenset({first, last}))
        table.append(f"    ({n}, {first}, {last}): {name},")
        for k in range(1, min(MAX_TRIM, (n - 1) // 2) + 1):
            if 2 * k >= n:
                continue
            name = f"trim_{n}_{k}"
            exact = frozenset(range(k)) | frozenset(range(n - k, n))
            lines += kernel(name, n, k, n - 1 - k, exact)
            table.append(f"    ({n}, {k}, {n - 1 - k}): {name},")
    lines += [
        "",
        "",
        "# (N, first, last) -> kernel(stack, out, bad_rows, first_block, last_block):",
        "# mean of sorted positions first..last for the columns of blocks [first_block, last_block)",
        "KERNELS = {",
    ]
    lines += table
    lines += ["}", ""]
    sys.stdout.write("\n".join(lines))


if __name__ == "__main__":
    main()
