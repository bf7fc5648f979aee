r"""Lagrange interpolation on a few scalar nodes, in monomial form (the coefficients of linear multistep methods).

Linear multistep samplers (LMS, DEIS, UniPC) integrate the polynomial that interpolates past model outputs.
With nodes $z_0, \dots, z_{p-1}$ (scalars of the grid, $p \le 4$), the Lagrange basis
$L_j(v) = \prod_{l \ne j}(v - z_l)/(z_j - z_l)$ is expanded as $L_j(v) = \sum_n c_{jn} v^n$, so that the integral of
$L_j$ against any weight is $\sum_n c_{jn}\mu_n$ with the weight's moments $\mu_n$ (closed forms: $1/(n+1)$ on
$[0, 1]$; $\varphi$-functions for the exponential weight). The same coefficients solve the transposed
Vandermonde system $\sum_j\rho_j z_j^n = b_n$ ($\rho_j = \sum_n c_{jn}b_n$), which is how UniPC states its weights.
"""

from __future__ import annotations

from collections.abc import Sequence

from jaxtyping import Array


def lagrange_monomials(nodes: Sequence[Array]) -> list[list[Array]]:
    r"""`c[j][n]`: the coefficient of $v^n$ in the Lagrange basis polynomial $L_j$ on `nodes` (distinct scalars).

    A single node gives $L_0 = 1$. Cost $O(p^3)$ scalar operations ($p \le 4$)."""
    p = len(nodes)
    out = []
    for j in range(p):
        poly = [1.0]  # coefficients of prod_{l != j} (v - z_l), lowest degree first
        denominator = 1.0
        for l in range(p):
            if l == j:
                continue
            shifted = [0.0] + poly  # v * poly
            poly = [shifted[n] - (nodes[l] * poly[n] if n < len(poly) else 0.0) for n in range(len(shifted))]
            denominator = denominator * (nodes[j] - nodes[l])
        out.append([c / denominator for c in poly])
    return out


def solve_transposed_vandermonde(nodes: Sequence[Array], rhs: Sequence[Array]) -> list[Array]:
    r"""$\rho$ with $\sum_j \rho_j z_j^n = b_n$ for $n = 0, \dots, p-1$ (`torch.linalg.solve(R, b)` in UniPC, where
    `R[n][j] = z_j ** n`), in closed form: $\rho_j = \sum_n c_{jn} b_n$."""
    basis = lagrange_monomials(nodes)
    return [sum((c * b for c, b in zip(row, rhs)), 0.0) for row in basis]
