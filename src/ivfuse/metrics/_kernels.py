"""Numba-compiled per-pixel stages of SSIM and VIF for :mod:`ivfuse.metrics.fast` (one pass, no temporaries).

Each kernel does, pixel by pixel, what the numpy code of :mod:`.structural` does array by array, in the same
arithmetic order; only the final sums are accumulated in a different order (and VIF's base-10 logarithms are
natural ones, which cancel in its ratio). :func:`kernels` returns None without numba; callers then use numpy.
"""

from __future__ import annotations

import numpy as np


def _ssim_sum(mx, sx, my, sy, fxy, c1, c2):  # pragma: no cover - compiled by numba
    """sum over pixels of lum * cs, with sxy = fxy - mx my (``structural._ssim_terms``)."""
    h, w = mx.shape
    buf = np.empty(w)
    tot = 0.0
    for i in range(h):
        for j in range(w):  # no reduction in this loop, so that it compiles to SIMD
            mxy = mx[i, j] * my[i, j]
            sxy = fxy[i, j] - mxy
            cs = (2 * sxy + c2) / (sx[i, j] + sy[i, j] + c2)
            lum = (2 * mxy + c1) / (mx[i, j] * mx[i, j] + my[i, j] * my[i, j] + c1)
            buf[j] = lum * cs
        row = 0.0
        for j in range(w):
            row += buf[j]
        tot += row
    return tot


def _vif_sums(mu1, f11, mu2, s2, f12, buf, lbuf, ibuf):  # pragma: no cover - compiled by numba
    """(sum ln(1 + g^2 s1 / (sv + 2)), sum ln(1 + s1 / 2)) of one scale (``structural._vifp_many``).

    ``s2`` is the distorted image's variance already clipped at 0; ``f11``/``f12`` the filtered ref^2 / ref*dist.
    ``buf``, ``lbuf``: float scratch of 2 W; ``ibuf``: int64 scratch of 2 W.
    """
    h, w = mu1.shape
    num = 0.0
    den = 0.0
    for i in range(h):
        for j in range(w):
            m1 = mu1[i, j]
            s1 = f11[i, j] - m1 * m1
            s12 = f12[i, j] - m1 * mu2[i, j]
            v2 = s2[i, j]
            s1 = 0.0 if s1 < 0 else s1
            g = s12 / (s1 + 1e-10)
            sv = v2 - g * s12
            # the reference's masked assignments in order, as selects (so that the loop compiles to SIMD)
            low1 = s1 < 1e-10
            g = 0.0 if low1 else g
            sv = v2 if low1 else sv
            s1 = 0.0 if low1 else s1
            low2 = v2 < 1e-10
            g = 0.0 if low2 else g
            sv = 0.0 if low2 else sv
            neg = g < 0
            sv = v2 if neg else sv
            g = 0.0 if neg else g
            sv = 1e-10 if sv <= 1e-10 else sv  # noqa: FURB136  (NaN stays NaN, as in numpy)
            buf[j] = 1 + g * g * s1 / (sv + 2.0)
            buf[w + j] = 1 + s1 / 2.0
        _LOG(buf, lbuf, ibuf)
        a = 0.0
        b = 0.0
        for j in range(w):
            a += lbuf[j]
            b += lbuf[w + j]
        num += a
        den += b
    return num, den


# ---- vectorisable exp and atan (loops of plain arithmetic and selects, which LLVM compiles to SIMD) ----
_LN2_HI = 6.93147180369123816490e-01  # fdlibm's split of ln 2 (k * _LN2_HI is exact for |k| < 2^20)
_LN2_LO = 1.90821492927058770002e-10


def _exp_loops(x, out, n, ibuf):  # pragma: no cover - compiled by numba
    """``out[:n] = exp(x[:n])`` with x clipped to [-700, 700] (callers only add the result to 1 or scale it there).

    exp(x) = 2^k exp(r), |r| <= ln2/2, exp(r) by its Taylor series to r^13 (truncation < 5e-18): within ~2 ulp.
    """
    for k in range(n):
        v = min(max(x[k], -700.0), 700.0)
        kf = np.floor(v * 1.4426950408889634 + 0.5)
        r = (v - kf * _LN2_HI) - kf * _LN2_LO
        p = 1.0 / 6227020800.0
        p = p * r + 1.0 / 479001600.0
        p = p * r + 1.0 / 39916800.0
        p = p * r + 1.0 / 3628800.0
        p = p * r + 1.0 / 362880.0
        p = p * r + 1.0 / 40320.0
        p = p * r + 1.0 / 5040.0
        p = p * r + 1.0 / 720.0
        p = p * r + 1.0 / 120.0
        p = p * r + 1.0 / 24.0
        p = p * r + 1.0 / 6.0
        p = p * r + 0.5
        p = p * r + 1.0
        out[k] = p * r + 1.0
        ibuf[k] = (np.int64(kf) + 1023) << 52
    sc = ibuf.view(np.float64)
    for k in range(n):
        out[k] = out[k] * sc[k]


def _atan_loops(x, out, n):  # pragma: no cover - compiled by numba
    """``out[:n] = atan(x[:n])`` (+-inf -> +-pi/2, NaN -> NaN): Cephes ``atan`` (rational approximation after
    reduction to |x| <= 0.66 by tan(3pi/8) and pi/4), within ~2 ulp of libm."""
    for k in range(n):
        v = x[k]
        a = abs(v)
        big = a > 2.41421356237309504880
        mid = a > 0.66
        xr = -1.0 / a if big else ((a - 1.0) / (a + 1.0) if mid else a)
        y0 = 1.5707963267948966 if big else (0.7853981633974483 if mid else 0.0)
        more = 6.123233995736765886130e-17 if big else (3.061616997868382943065e-17 if mid else 0.0)
        z = xr * xr
        pp = -8.750608600031904122785e-1
        pp = pp * z - 1.615753718733365076637e1
        pp = pp * z - 7.500855792314704667340e1
        pp = pp * z - 1.228866684490136173410e2
        pp = pp * z - 6.485021904942025371773e1
        qq = z + 2.485846490142306297962e1
        qq = qq * z + 1.650270098316988542046e2
        qq = qq * z + 4.328810604912902668951e2
        qq = qq * z + 4.853903996359136964868e2
        qq = qq * z + 1.945506571482613964425e2
        rr = z * pp / qq
        rr = xr * rr + xr
        res = y0 + (rr + more)
        out[k] = -res if v < 0 else res


def _qabf_sums(dxa, dya, dxb, dyb, dxf, dyf):  # pragma: no cover - compiled by numba
    """(sum(Q^AF g_A + Q^BF g_B), sum(g_A + g_B)) of Qabf from the zero-border Sobels (dx, dy) of A, B, F.

    As ``gradient._qabf_grad``/``_qabf_q``: sx = -dx, sy = dy, g = sqrt(sx^2 + sy^2), angle atan(sy/sx) (pi/2 where
    sx == 0); G = gf/ga, ga/gf or (ga == gf) gf; Q = 0.9994/(1 + e^{-15(G-0.5)}) * 0.9879/(1 + e^{-22(Aa-0.8)}).
    Row by row; the loops without a reduction compile to SIMD.
    """
    h, w = dxa.shape
    g = np.empty(3 * w)
    r = np.empty(3 * w)
    ang = np.empty(3 * w)
    arg = np.empty(4 * w)
    ex = np.empty(4 * w)
    ibuf = np.empty(4 * w, np.int64)
    bn = np.empty(w)
    bd = np.empty(w)
    hp = 1.5707963267948966
    num = 0.0
    den = 0.0
    for i in range(h):
        for m in range(3):
            dxm = dxa if m == 0 else (dxb if m == 1 else dxf)
            dym = dya if m == 0 else (dyb if m == 1 else dyf)
            o = m * w
            for j in range(w):
                sx = -dxm[i, j]
                dy = dym[i, j]
                g[o + j] = np.sqrt(sx * sx + dy * dy)
                r[o + j] = dy / (1.0 if sx == 0 else sx)
        _ATAN(r, ang, 3 * w)
        for m in range(2):
            dxm = dxa if m == 0 else dxb
            o = m * w
            for j in range(w):
                gf = g[2 * w + j]
                af = hp if dxf[i, j] == 0 else ang[2 * w + j]
                gs = g[o + j]
                a_s = hp if dxm[i, j] == 0 else ang[o + j]
                G = gf / gs if gs > gf else (gf if gs == gf else gs / gf)
                aa = 1 - abs(a_s - af) / hp
                arg[2 * o + j] = -15 * (G - 0.5)
                arg[2 * o + w + j] = -22 * (aa - 0.8)
        _EXP(arg, ex, 4 * w, ibuf)
        for j in range(w):
            qa = (0.9994 / (1 + ex[j])) * (0.9879 / (1 + ex[w + j]))
            qb = (0.9994 / (1 + ex[2 * w + j])) * (0.9879 / (1 + ex[3 * w + j]))
            bn[j] = qa * g[j] + qb * g[w + j]
            bd[j] = g[j] + g[w + j]
        rn = 0.0
        rd = 0.0
        for j in range(w):
            rn += bn[j]
            rd += bd[j]
        num += rn
        den += rd
    return num, den


def _nabf_sums(dx1, dy1, dx2, dy2, dxf, dyf):  # pragma: no cover - compiled by numba
    """(sum of the artefact terms, sum of the weights) of ``analysis_nabf(f, I1, I2)`` from unscaled
    mirror-border Sobels (Tang's /8 Sobel: gv = dx/8, gh = dy/8; atan(gv/gh) = atan(dx/dy)).

    Row by row: magnitudes and weights of all pixels (SIMD), then the pixels where the fused gradient exceeds both
    source gradients are gathered and only they get angles and the two sigmoid terms."""
    h, w = dx1.shape
    gg = np.empty(3 * w)
    wt = np.empty(2 * w)
    idx = np.empty(w, np.int64)
    sel = np.empty(8 * w)  # gathered g1, g2, gf, w1, w2 of the selected pixels
    rat = np.empty(3 * w)
    ang = np.empty(3 * w)
    arg = np.empty(4 * w)
    ex = np.empty(4 * w)
    ibuf = np.empty(4 * w, np.int64)
    bt = np.empty(w)
    hp = 1.5707963267948966
    wsum = 0.0
    tot = 0.0
    for i in range(h):
        for j in range(w):
            g1 = np.sqrt(dx1[i, j] * dx1[i, j] + dy1[i, j] * dy1[i, j]) / 8
            g2 = np.sqrt(dx2[i, j] * dx2[i, j] + dy2[i, j] * dy2[i, j]) / 8
            gg[j] = g1
            gg[w + j] = g2
            gg[2 * w + j] = np.sqrt(dxf[i, j] * dxf[i, j] + dyf[i, j] * dyf[i, j]) / 8
            wt[j] = g1 * np.sqrt(g1) if g1 >= 2 else 0.001
            wt[w + j] = g2 * np.sqrt(g2) if g2 >= 2 else 0.001
        rw = 0.0
        n = 0
        for j in range(w):
            rw += wt[j] + wt[w + j]
            if gg[2 * w + j] > gg[j] and gg[2 * w + j] > gg[w + j]:
                idx[n] = j
                n += 1
        wsum += rw
        for s in range(n):
            j = idx[s]
            sel[s] = gg[j]
            sel[w + s] = gg[w + j]
            sel[2 * w + s] = gg[2 * w + j]
            sel[3 * w + s] = wt[j]
            sel[4 * w + s] = wt[w + j]
            rat[s] = dx1[i, j] / dy1[i, j]
            rat[w + s] = dx2[i, j] / dy2[i, j]
            rat[2 * w + s] = dxf[i, j] / dyf[i, j]
            sel[5 * w + s] = 1.0 if (dx1[i, j] == 0 and dy1[i, j] == 0) else 0.0  # angle 0 where both are 0
            sel[6 * w + s] = 1.0 if (dx2[i, j] == 0 and dy2[i, j] == 0) else 0.0
            sel[7 * w + s] = 1.0 if (dxf[i, j] == 0 and dyf[i, j] == 0) else 0.0
        _ATAN(rat, ang, n)
        _ATAN(rat[w:], ang[w:], n)
        _ATAN(rat[2 * w :], ang[2 * w :], n)
        for m in range(2):
            for s in range(n):
                af = 0.0 if sel[7 * w + s] != 0 else ang[2 * w + s]
                a_s = 0.0 if sel[(5 + m) * w + s] != 0 else ang[m * w + s]
                gf = sel[2 * w + s]
                gs = sel[m * w + s]
                ratio = 0.0 if (gs == 0 or gf == 0) else (gf / gs if gs > gf else gs / gf)
                ar = abs(abs(a_s - af) - hp) * 2 / 3.141592653589793
                arg[(2 * m) * w + s] = -19 * (ratio - 0.5)
                arg[(2 * m + 1) * w + s] = -22 * (ar - 0.5)
        for m in range(4):
            _EXP(arg[m * w :], ex[m * w :], n, ibuf)
        for s in range(n):
            q1 = np.sqrt((0.9999 / (1 + ex[s])) * (0.9995 / (1 + ex[w + s])))
            q2 = np.sqrt((0.9999 / (1 + ex[2 * w + s])) * (0.9995 / (1 + ex[3 * w + s])))
            bt[s] = (1 - q1) * sel[3 * w + s] + (1 - q2) * sel[4 * w + s]
        rt = 0.0
        for s in range(n):
            rt += bt[s]
        tot += rt
    return tot, wsum


def _fmi_rows(a, b, f, out, r0, r1):  # pragma: no cover - compiled by numba
    """``information._fmi_map_loops`` (rows ``r0:r1`` of the per-window FMI map of sources ``a``, ``b`` and fused
    ``f`` into ``out``), reorganised for speed with the same arithmetic per window:

    * the row's windows are held as structure-of-arrays (image, tap, window), so that the windows, min-max
      normalisation, pmfs, "equal windows" tests and the per-window statistics (cdf, mean, sds, entropies,
      Pearson numerator) are loops over the windows that compile to SIMD; only the merge of the two cdfs (the
      coupling's staircase) and the joint entropy stay one window at a time;
    * the staircase sums of the joint entropy's product part, sum p_i p_j and sum p_i p_j (log p_i + log p_j), are
      accumulated during the merge (kk = 1 - mix factors out: the correction is kk (log|kk| sum + sum)).

    Image index m: 0 infrared, 1 visible, 2 fused. Agrees with the reference kernel to rounding (~1e-15 per window).
    """
    nq = a.shape[1] - 2
    W = np.empty((3, 9, nq))  # raw windows, column-major taps (MATLAB x(:))
    X = np.empty((3, 9, nq))  # min-max normalised windows
    P = np.empty((3, 9, nq))  # pmfs
    PL = np.empty((3, 9, nq))  # pmfs with 0 -> 1 (log 0 -> 0)
    LP = np.empty((3, 9, nq))
    lbuf = np.empty(27 * nq, np.int64)
    lo = np.empty((3, nq))
    hi = np.empty((3, nq))
    inv = np.empty((3, nq))
    eqa = np.empty(nq, np.bool_)  # infrared window equals the fused one (scores 1)
    eqb = np.empty(nq, np.bool_)  # visible window equals the fused one (raw, or normalised: see information.py)
    CDF = np.empty((3, 9, nq))
    T = np.empty((3, 9, nq))  # pmf - mean(pmf)
    PSUM = np.empty((3, nq))
    CSUM = np.empty((3, nq))
    E1 = np.empty((3, nq))
    E2 = np.empty((3, nq))
    ENT = np.empty((3, nq))  # sum p log p (= -entropy)
    TT = np.empty((3, nq))
    SD = np.empty((3, nq))
    NUM = np.empty((2, nq))
    g = np.empty(9)  # source breakpoints of the merge
    cl = np.empty(17)
    ppa = np.empty(17)
    jp = np.ones((nq, 2, 17))  # staircase joint-pmf entries (|.|, 1.0 where unused)
    ljp = np.empty((nq, 2, 17))
    jbuf = np.empty(nq * 34, np.int64)
    jv = np.empty((nq, 2, 17))
    njp = np.zeros((nq, 2), np.int64)
    part = np.empty((nq, 2))  # joint entropy without the -jp log|jp| staircase terms
    hs = np.empty((nq, 2))  # H_source + H_fused
    val = np.empty((nq, 2))
    for r in range(r0, r1):
        # ---- phase 1: windows, normalisation, pmfs, "equal windows" tests (over all windows of the row) ----
        for cc in range(3):
            for rr in range(3):
                k = 3 * cc + rr
                for q in range(nq):
                    W[0, k, q] = a[r + rr, q + cc]
                    W[1, k, q] = b[r + rr, q + cc]
                    W[2, k, q] = f[r + rr, q + cc]
        for m in range(3):
            for q in range(nq):
                lo[m, q] = W[m, 0, q]
                hi[m, q] = W[m, 0, q]
            for k in range(1, 9):
                for q in range(nq):
                    lo[m, q] = min(lo[m, q], W[m, k, q])
                    hi[m, q] = max(hi[m, q], W[m, k, q])
            for k in range(9):
                for q in range(nq):
                    X[m, k, q] = 1.0 if hi[m, q] == lo[m, q] else (W[m, k, q] - lo[m, q]) / (hi[m, q] - lo[m, q])
            for q in range(nq):
                tot = ((X[m, 0, q] + X[m, 1, q]) + X[m, 2, q]) + ((X[m, 3, q] + X[m, 4, q]) + X[m, 5, q])
                tot = tot + ((X[m, 6, q] + X[m, 7, q]) + X[m, 8, q])
                inv[m, q] = 1.0 / tot  # x * (1/tot): within 1 ulp of x / tot, exact for the special windows
            for k in range(9):
                for q in range(nq):
                    pk = X[m, k, q] * inv[m, q]
                    P[m, k, q] = pk
                    PL[m, k, q] = 1.0 if pk == 0 else pk
        for q in range(nq):
            eqa[q] = True
            eqb[q] = True
        for k in range(9):
            for q in range(nq):
                eqa[q] = eqa[q] & (W[0, k, q] == W[2, k, q])
        for k in range(9):  # fSub was normalised in the IR branch unless the IR window was equal
            for q in range(nq):
                eqb[q] = eqb[q] & (W[1, k, q] == (W[2, k, q] if eqa[q] else X[2, k, q]))
        _LOG(PL.reshape(-1), LP.reshape(-1), lbuf)
        # ---- phase 2: per-window statistics (over all windows), then the couplings (window by window) ----
        for m in range(3):
            for q in range(nq):
                PSUM[m, q] = 0.0
                CSUM[m, q] = 0.0
                E1[m, q] = 0.0
                E2[m, q] = 0.0
                ENT[m, q] = 0.0
                TT[m, q] = 0.0
            for k in range(9):
                for q in range(nq):
                    pk = P[m, k, q]
                    acc = PSUM[m, q] + pk
                    PSUM[m, q] = acc
                    CDF[m, k, q] = acc
                    CSUM[m, q] += acc
                    E1[m, q] += (k + 1) * pk
                    E2[m, q] += (k + 1) * (k + 1) * pk
                    ENT[m, q] += pk * LP[m, k, q]
            for k in range(9):
                for q in range(nq):
                    tk = P[m, k, q] - PSUM[m, q] / 9.0  # sequential sum, as Octave's mean()
                    T[m, k, q] = tk
                    TT[m, q] += tk * tk
            for q in range(nq):
                SD[m, q] = np.sqrt(max(E2[m, q] - E1[m, q] * E1[m, q], 0.0))
        for m in range(2):
            for q in range(nq):
                NUM[m, q] = 0.0
            for k in range(9):
                for q in range(nq):
                    NUM[m, q] += T[m, k, q] * T[2, k, q]
        for q in range(nq):
            for m in range(2):
                if eqa[q] if m == 0 else eqb[q]:
                    val[q, m] = 1.0  # equal windows score 1
                    continue
                num = NUM[m, q]
                c = 0.0 if num == 0 else num / np.sqrt(TT[m, q] * TT[2, q])
                upper = c >= 0
                mix = 0.0
                n = 0
                sp = 0.0  # sum over the staircase of p_i p_j, and of p_i p_j (log p_i + log p_j)
                spl = 0.0
                if SD[m, q] != 0 and SD[2, q] != 0 and not (upper and c == 0):
                    # staircase of the coupling: merge the fused cdf with the source breakpoints g (increasing in u)
                    if upper:  # comonotone: source cell j covers u in (cdf_{j-1}, cdf_j]
                        for k in range(9):
                            g[k] = CDF[m, k, q]
                        last = 0.0
                        j0, js = 0, 1
                    else:  # countermonotone: source cell j covers u in (1 - cdf_j, 1 - cdf_{j-1}], from j = 8
                        for k in range(8):
                            g[k] = 1.0 - CDF[m, 7 - k, q]
                        g[8] = 1.0
                        last = 1.0 - CDF[m, 8, q]
                        j0, js = 8, -1
                    i = 0
                    jj = 0
                    cov = 0.0  # sum_ij B(F_i, S_j) = sum over cells of length * #{F_i >= u} * #{S_j covering u}
                    while i < 9 and jj < 9:  # merge step (ties advance both)
                        fi = CDF[2, i, q]
                        sj = g[jj]
                        e = min(fi, sj)
                        cjn = j0 + js * jj
                        ln = max(e - last, 0.0)
                        pp = P[2, i, q] * P[m, cjn, q]
                        cl[n] = ln
                        ppa[n] = pp
                        cov += ln * ((9 - i) * (9 - cjn))
                        sp += pp
                        spl += pp * (LP[2, i, q] + LP[m, cjn, q])
                        last = e
                        i += fi <= sj
                        jj += sj <= fi
                        n += 1
                    cov -= CSUM[2, q] * CSUM[m, q]
                    mix = c / (cov / (SD[2, q] * SD[m, q]))
                # joint entropy: product part in closed form over all 81 cells, corrected on the staircase
                kk = 1.0 - mix
                lk = np.log(abs(kk)) if kk != 0 else 0.0
                joint = 0.0
                if kk != 0:
                    joint = -kk * (lk * PSUM[2, q] * PSUM[m, q] + PSUM[m, q] * ENT[2, q] + PSUM[2, q] * ENT[m, q])
                if mix == 0:
                    n = 0
                if n > 0:  # + sum prod log|prod|, prod = kk p_i p_j (-v log|v| added in phase 3)
                    joint += kk * (lk * sp + spl)
                for s in range(n):
                    v = mix * cl[s] + kk * ppa[s]
                    jv[q, m, s] = v
                    jp[q, m, s] = 1.0 if v == 0 else abs(v)
                for s in range(n, 17):
                    jp[q, m, s] = 1.0
                njp[q, m] = n
                part[q, m] = joint
                hs[q, m] = -ENT[m, q] - ENT[2, q]
        _LOG(jp.reshape(-1), ljp.reshape(-1), jbuf)
        # ---- phase 3: FMI per window ----
        for q in range(nq):
            for m in range(2):
                if eqa[q] if m == 0 else eqb[q]:
                    continue
                joint = part[q, m]
                for s in range(njp[q, m]):
                    joint -= jv[q, m, s] * ljp[q, m, s]
                mi = hs[q, m] - joint
                val[q, m] = 0.0 if mi == 0 else 2 * mi / hs[q, m]
            out[r, q] = (val[q, 0] + val[q, 1]) / 2


def _qcb_sum(y1a, y2a, y1b, y2b, y1f, y2f):  # pragma: no cover - compiled by numba
    """sum over pixels of lam1 Q1 + lam2 Q2 of Qcb (``perceptual.qcb``) from the two Gaussian-filtered CSF images
    (y1 = G(sigma 2) * y, y2 = G(sigma 4) * y) of A, B and F: C = c^3 / (c^2 + 1e-4), c = |y1 / y2 - 1|."""
    h, w = y1a.shape
    buf = np.empty(w)
    tot = 0.0
    for i in range(h):
        for j in range(w):  # no reduction in this loop, so that it compiles to SIMD
            ca = abs(y1a[i, j] / y2a[i, j] - 1)
            cb = abs(y1b[i, j] / y2b[i, j] - 1)
            cf = abs(y1f[i, j] / y2f[i, j] - 1)
            ca2, cb2, cf2 = ca * ca, cb * cb, cf * cf
            c1 = (ca2 * ca) / (ca2 + 0.0001)
            c2 = (cb2 * cb) / (cb2 + 0.0001)
            c3 = (cf2 * cf) / (cf2 + 0.0001)
            q1 = c1 / c3 if c1 < c3 else c3 / c1
            q2 = c2 / c3 if c2 < c3 else c3 / c2
            s1 = c1 * c1
            s2 = c2 * c2
            den = s1 + s2
            buf[j] = (s1 / den) * q1 + (s2 / den) * q2
        row = 0.0
        for j in range(w):
            row += buf[j]
        tot += row
    return tot


_LOG = _EXP = _ATAN = None
_K: dict | None = None


def kernels() -> dict | None:
    """The compiled kernels (ssim_sum, vif_sums, qabf_sums, nabf_sums, exp, atan; compiled once, cached on disk), or
    None without numba."""
    global _K, _LOG, _EXP, _ATAN
    if _K is None:
        try:
            import numba
        except ImportError:  # pragma: no cover - numba is a dependency
            _K = {}
        else:
            from .information import _log_loops

            jit = numba.njit(cache=True, nogil=True, error_model="numpy")
            _LOG, _EXP, _ATAN = jit(_log_loops), jit(_exp_loops), jit(_atan_loops)
            _K = {
                "ssim_sum": jit(_ssim_sum),
                "vif_sums": jit(_vif_sums),
                "qabf_sums": jit(_qabf_sums),
                "nabf_sums": jit(_nabf_sums),
                "fmi_rows": jit(_fmi_rows),
                "qcb_sum": jit(_qcb_sum),
                "exp": _EXP,
                "atan": _ATAN,
            }
    return _K or None
