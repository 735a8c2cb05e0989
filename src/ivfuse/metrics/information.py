"""Information-theoretic metrics: Haghighat's fast FMI (raw pixels / DCT) and Wang's Qncie.

Each function takes float64 H×W arrays on 0–255 as ``(F, A, B)`` = (fused, infrared, visible).
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy.fft import dctn

from ._filters import normalize1
from .base import register_metric

# --------------------------------------------------------------------------------------------------------------
# Fast-FMI (Haghighat & Razian 2014) as Tang's ``analysis_fmi.m`` computes it, run in GNU Octave.
#
# Per 3×3 window (column-major, MATLAB ``x(:)``) and per pair (source s, fused f) the reference:
#   * scores 1 if the raw windows are equal; otherwise min-max normalises both windows (a constant window becomes
#     ones(3)), takes pmf = x / sum(x), cdf = cumsum(pmf), Pearson c between the pmfs (0 when the numerator is 0),
#     population sds of the pmfs over the index 1..9;
#   * joint pmf = mix * dB + (1 - mix) * pf ⊗ ps, with B the upper Fréchet bound min(Ff_i, Fs_j) when c >= 0 and
#     the lower bound max(Ff_i + Fs_j - 1, 0) when c < 0, dB its 2-D difference, and mix = c / corr_B
#     (corr_B = cov_B / (sd_f sd_s); mix = 0 when a sd is 0 or, for c >= 0, when c == 0);
#   * FMI = 2 MI / (H_s + H_f), MI = H_s + H_f - H_joint, with real(-p log2 p) for tiny negative joint entries.
# Two details of the reference change values and are reproduced on purpose (verified per window against Octave):
#   * ``fSub`` is overwritten by its normalised version in the IR branch, so the visible pair's "equal windows"
#     test compares the raw visible window with the *normalised* fused window whenever IR and fused differ;
#   * ``mean(pmf)`` sums sequentially: for a constant window (pmf = 1/9 each) it is 1 ulp above 1/9, so two
#     constant windows get c = 1 (not 0) and an FMI of ~1.
# (A variance that rounds below 0 is taken as 0 where Octave's sqrt would turn complex; that needs a pmf within
# ~1e-14 of a point mass, which 8-bit pixels cannot produce.)
#
# dB is non-zero only on the "staircase" of cells whose cdf intervals overlap (at most 17 of the 81), so the joint
# entropy is the closed form of the product part over all cells plus a correction on those cells; the compiled
# kernel walks that staircase by merging the two cdfs (and takes its logarithms a row at a time, vectorised).
# Per window it agrees with Octave running analysis_fmi.m to < 1e-12 (tests/test_metrics_fmi.py holds a plain
# per-window transcription of the reference that the fast paths are tested against).
# --------------------------------------------------------------------------------------------------------------


def _windows(x: np.ndarray) -> np.ndarray:
    """All 3×3 windows flattened column-major (MATLAB ``x(:)``): shape ((H-2)·(W-2), 9)."""
    v = sliding_window_view(x, (3, 3))
    return np.ascontiguousarray(v.transpose(0, 1, 3, 2)).reshape(-1, 9)


def _fmi_map_numpy(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Vectorised fallback (used when numba is unavailable): the same per-window FMI map, (H-2)×(W-2)."""
    h, w = a.shape
    out = np.empty((h - 2) * (w - 2))
    wa_all, wb_all, wf_all = _windows(a), _windows(b), _windows(f)
    idx = np.arange(1, 10, dtype=np.float64)

    def stats(s):
        lo, hi = s.min(axis=1, keepdims=True), s.max(axis=1, keepdims=True)
        const = hi == lo
        x = np.where(const, 1.0, (s - lo) / np.where(const, 1.0, hi - lo))
        p = x / x.sum(axis=1, keepdims=True)
        mean = p[:, 0].copy()
        for k in range(1, 9):  # sequential, as Octave's sum()
            mean += p[:, k]
        t = p - (mean / 9.0)[:, None]
        sd = np.sqrt(np.maximum((idx**2 * p).sum(1) - (idx * p).sum(1) ** 2, 0.0))
        return x, p, np.cumsum(p, axis=1), t, sd

    def xlogx_neg(q):
        return np.where(q != 0, -q * np.log(np.where(q != 0, np.abs(q), 1.0)), 0.0)

    def pair(s, fs):
        _, sp, sc, st, ssd = s
        _, fp, fc, ft, fsd = fs
        num = (st * ft).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            c = np.where(num == 0, 0.0, num / np.sqrt((st * st).sum(axis=1) * (ft * ft).sum(axis=1)))
        Fi, Aj = fc[:, :, None], sc[:, None, :]
        pos = c >= 0
        bound = np.where(pos[:, None, None], np.minimum(Fi, Aj), np.maximum(Fi + Aj - 1, 0.0))
        cov = (bound - Fi * Aj).sum(axis=(1, 2))
        sd = fsd * ssd
        ok = (sd != 0) & ~((c == 0) & pos)
        with np.errstate(invalid="ignore", divide="ignore"):
            mix = np.where(ok, c / (cov / np.where(sd == 0, 1, sd)), 0.0)
        pad = np.zeros((bound.shape[0], 10, 10))
        pad[:, 1:, 1:] = bound
        d = pad[:, 1:, 1:] - pad[:, :-1, 1:] - pad[:, 1:, :-1] + pad[:, :-1, :-1]
        jpdf = mix[:, None, None] * d + (1 - mix[:, None, None]) * (fp[:, :, None] * sp[:, None, :])
        je = xlogx_neg(jpdf).sum(axis=(1, 2))
        se, fe = xlogx_neg(sp).sum(1), xlogx_neg(fp).sum(1)
        mi = se + fe - je
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(mi == 0, 0.0, 2 * mi / (se + fe))

    chunk = 20000
    for i in range(0, wa_all.shape[0], chunk):
        sl = slice(i, i + chunk)
        wa, wb, wf = wa_all[sl], wb_all[sl], wf_all[sl]
        sf = stats(wf)
        same_af = np.all(wa == wf, axis=1)
        same_bf = np.all(wb == np.where(same_af[:, None], wf, sf[0]), axis=1)  # fSub was normalised (see above)
        faf = np.where(same_af, 1.0, pair(stats(wa), sf))
        fbf = np.where(same_bf, 1.0, pair(stats(wb), sf))
        out[sl] = (faf + fbf) / 2
    return out.reshape(h - 2, w - 2)


_LN2_HI = 6.93147180369123816490e-01  # ln 2 split in two (fdlibm), for an accurate e * ln 2
_LN2_LO = 1.90821492927058770002e-10


def _log_loops(x, out, ibuf):  # pragma: no cover - compiled by numba (see _fmi_kernel)
    """``out = log(x)`` for 1-D contiguous ``x`` of positive normal numbers, in loops the compiler vectorises.

    x = 2^e m with m in [sqrt(1/2), sqrt(2)); log m = 2 atanh(s), s = (m-1)/(m+1), |s| < 0.1716, summed to s^19
    (truncation < 1e-17): within 2 ulp of libm's log, about 3x faster on long arrays. ``ibuf``: int64 scratch.
    """
    n = x.size
    xb = x.view(np.int64)
    for k in range(n):
        ibuf[k] = (xb[k] & 0x000FFFFFFFFFFFFF) | 0x3FF0000000000000
    mf = ibuf.view(np.float64)
    for k in range(n):
        e = np.float64(((xb[k] >> 52) & 0x7FF) - 1023)
        m = mf[k]
        big = m > 1.4142135623730951
        m = m * 0.5 if big else m
        e = e + 1.0 if big else e
        s = (m - 1.0) / (m + 1.0)
        z = s * s
        poly = 1.0 / 19.0
        poly = poly * z + 1.0 / 17.0
        poly = poly * z + 1.0 / 15.0
        poly = poly * z + 1.0 / 13.0
        poly = poly * z + 1.0 / 11.0
        poly = poly * z + 1.0 / 9.0
        poly = poly * z + 1.0 / 7.0
        poly = poly * z + 1.0 / 5.0
        poly = poly * z + 1.0 / 3.0
        out[k] = e * _LN2_HI + (e * _LN2_LO + (2.0 * s + 2.0 * s * z * poly))
    for k in range(n):  # rare inputs the bit trick does not cover (subnormal, inf, nan): libm
        v = x[k]
        if not (v >= 2.2250738585072014e-308 and v < np.inf):
            out[k] = np.log(v)


def _fmi_map_loops(a, b, f, out, r0, r1):  # pragma: no cover - compiled by numba (see _fmi_kernel)
    """Rows ``r0:r1`` of the per-window FMI map of sources ``a``, ``b`` and fused ``f`` into ``out`` ((H-2)×(W-2)).

    One output row at a time, in phases so that the logarithms of a whole row are taken together (vectorised):
    pmfs of all windows -> their logs -> per-window statistics and the two couplings -> logs of the staircase
    joint-pmf entries -> FMI. Image index m: 0 infrared, 1 visible, 2 fused. Entropies in nats (FMI is a ratio).
    """
    nq = a.shape[1] - 2
    win = np.empty((3, 9))
    x = np.empty((3, 9))  # min-max normalised windows (Octave's aSub/bSub/fSub after normalisation)
    p = np.empty((nq, 3, 9))  # pmfs of the row's windows (1.0 where unused or zero, so that log = 0)
    lp = np.empty((nq, 3, 9))
    lbuf = np.empty(nq * 27, np.int64)
    pz = np.empty((nq, 3, 9), np.bool_)  # pmf entry is exactly 0
    active = np.empty((nq, 3), np.bool_)  # window's statistics are needed (not an "equal windows" pair)
    cdf = np.empty((3, 9))
    t = np.empty((3, 9))  # pmf - mean(pmf)
    sd = np.empty(3)
    ent = np.empty(3)  # sum p log p  (= -entropy)
    psum = np.empty(3)
    cdfsum = np.empty(3)
    tt = np.empty(3)
    ci = np.empty(17, np.int64)
    cj = np.empty(17, np.int64)
    cl = np.empty(17)
    g = np.empty(9)  # source breakpoints of the merge
    jp = np.empty((nq, 2, 17))  # staircase joint-pmf entries (|.|, 1.0 where unused) and their signs
    ljp = np.empty((nq, 2, 17))
    jbuf = np.empty(nq * 34, np.int64)
    jv = np.empty((nq, 2, 17))
    njp = np.zeros((nq, 2), np.int64)
    part = np.empty((nq, 2))  # joint entropy without the -jp log|jp| staircase terms
    hs = np.empty((nq, 2))  # H_source + H_fused
    val = np.empty((nq, 2))
    for r in range(r0, r1):
        # ---- phase 1: windows, "equal windows" tests, pmfs ----
        for q in range(nq):
            for cc in range(3):
                for rr in range(3):
                    win[0, 3 * cc + rr] = a[r + rr, q + cc]
                    win[1, 3 * cc + rr] = b[r + rr, q + cc]
                    win[2, 3 * cc + rr] = f[r + rr, q + cc]
            for m in (2, 0, 1):  # fused first: its normalised window decides the visible "equal" test
                active[q, m] = True
                if m != 2:
                    same = True
                    for k in range(9):
                        if win[m, k] != (win[2, k] if (m == 0 or not active[q, 0]) else x[2, k]):
                            same = False
                            break
                    if same:
                        active[q, m] = False
                        for k in range(9):
                            p[q, m, k] = 1.0
                        continue
                lo = win[m, 0]
                hi = win[m, 0]
                for k in range(1, 9):
                    lo = min(lo, win[m, k])
                    hi = max(hi, win[m, k])
                if hi == lo:
                    for k in range(9):
                        x[m, k] = 1.0
                else:
                    for k in range(9):
                        x[m, k] = (win[m, k] - lo) / (hi - lo)
                tot = ((x[m, 0] + x[m, 1]) + x[m, 2]) + ((x[m, 3] + x[m, 4]) + x[m, 5])
                tot = tot + ((x[m, 6] + x[m, 7]) + x[m, 8])
                inv = 1.0 / tot  # x * (1/tot) is within 1 ulp of x / tot, and exact for the special windows
                for k in range(9):  # (point mass: x = tot = 1; constant window: x = 1, tot = 9)
                    pk = x[m, k] * inv
                    pz[q, m, k] = pk == 0
                    p[q, m, k] = 1.0 if pk == 0 else pk
        _LOG(p.reshape(-1), lp.reshape(-1), lbuf)
        # ---- phase 2: per-window statistics and the couplings ----
        for q in range(nq):
            for m in (2, 0, 1):
                if not active[q, m]:
                    val[q, m] = 1.0  # equal windows score 1
                    continue
                acc = 0.0
                csum = 0.0
                e1 = 0.0
                e2 = 0.0
                s_ent = 0.0
                for k in range(9):
                    if pz[q, m, k]:
                        p[q, m, k] = 0.0
                        lp[q, m, k] = 0.0
                    pk = p[q, m, k]
                    acc += pk
                    cdf[m, k] = acc
                    csum += acc
                    e1 += (k + 1) * pk
                    e2 += (k + 1) * (k + 1) * pk
                    s_ent += pk * lp[q, m, k]
                mean = acc / 9.0  # sequential sum, as Octave's mean()
                s_tt = 0.0
                for k in range(9):
                    t[m, k] = p[q, m, k] - mean
                    s_tt += t[m, k] * t[m, k]
                sd[m] = np.sqrt(max(e2 - e1 * e1, 0.0))
                ent[m] = s_ent
                psum[m] = acc
                cdfsum[m] = csum
                tt[m] = s_tt
                if m == 2:
                    continue
                # pair (source m, fused 2)
                num = 0.0
                for k in range(9):
                    num += t[m, k] * t[2, k]
                c = 0.0 if num == 0 else num / np.sqrt(tt[m] * tt[2])
                upper = c >= 0
                mix = 0.0
                n = 0
                if sd[m] != 0 and sd[2] != 0 and not (upper and c == 0):
                    # staircase of the coupling: merge the fused cdf with the source breakpoints g (increasing in u)
                    if upper:  # comonotone: source cell j covers u in (cdf_{j-1}, cdf_j]
                        for k in range(9):
                            g[k] = cdf[m, k]
                        last = 0.0
                        j0, js = 0, 1
                    else:  # countermonotone: source cell j covers u in (1 - cdf_j, 1 - cdf_{j-1}], from j = 8
                        for k in range(8):
                            g[k] = 1.0 - cdf[m, 7 - k]
                        g[8] = 1.0
                        last = 1.0 - cdf[m, 8]
                        j0, js = 8, -1
                    i = 0
                    jj = 0
                    cov = 0.0  # sum_ij B(F_i, S_j) = sum over cells of length * #{F_i >= u} * #{S_j covering u}
                    while i < 9 and jj < 9:  # branch-free merge step (ties advance both)
                        fi = cdf[2, i]
                        sj = g[jj]
                        e = min(fi, sj)
                        ci[n] = i
                        cj[n] = j0 + js * jj
                        cl[n] = max(e - last, 0.0)
                        cov += cl[n] * ((9 - i) * (9 - cj[n]))
                        last = e
                        i += fi <= sj
                        jj += sj <= fi
                        n += 1
                    cov -= cdfsum[2] * cdfsum[m]
                    mix = c / (cov / (sd[2] * sd[m]))
                # joint entropy: product part in closed form over all 81 cells, corrected on the staircase
                kk = 1.0 - mix
                lk = np.log(abs(kk)) if kk != 0 else 0.0
                joint = -kk * (lk * psum[2] * psum[m] + psum[m] * ent[2] + psum[2] * ent[m]) if kk != 0 else 0.0
                if mix == 0:
                    n = 0
                for s in range(n):
                    prod = kk * p[q, 2, ci[s]] * p[q, m, cj[s]]
                    v = mix * cl[s] + prod
                    # + prod log|prod| (lp = 0 where the pmf is 0, and then prod = 0); -v log|v| added in phase 3
                    joint += prod * (lk + lp[q, 2, ci[s]] + lp[q, m, cj[s]])
                    jv[q, m, s] = v
                    jp[q, m, s] = 1.0 if v == 0 else abs(v)
                for s in range(n, 17):
                    jp[q, m, s] = 1.0
                njp[q, m] = n
                part[q, m] = joint
                hs[q, m] = -ent[m] - ent[2]
        _LOG(jp.reshape(-1), ljp.reshape(-1), jbuf)
        # ---- phase 3: FMI per window ----
        for q in range(nq):
            for m in range(2):
                if not active[q, m]:
                    continue
                joint = part[q, m]
                for s in range(njp[q, m]):
                    joint -= jv[q, m, s] * ljp[q, m, s]
                mi = hs[q, m] - joint
                val[q, m] = 0.0 if mi == 0 else 2 * mi / hs[q, m]
            out[r, q] = (val[q, 0] + val[q, 1]) / 2


_LOG = None
_KERNEL = None


def _fmi_kernel():
    """The numba-compiled :func:`_fmi_map_loops` (compiled once, cached on disk), or None without numba."""
    global _KERNEL, _LOG
    if _KERNEL is None:
        try:
            import numba
        except ImportError:  # pragma: no cover - numba is a dependency; the numpy path gives the same values
            _KERNEL = False
        else:
            jit = numba.njit(cache=True, nogil=True, error_model="numpy")
            _LOG = jit(_log_loops)  # a global of _fmi_map_loops: bound before that is compiled
            _KERNEL = jit(_fmi_map_loops)
    return _KERNEL or None


def _fmi_threads() -> int:
    """Threads for the FMI loops: ``OMP_NUM_THREADS`` (all cores when unset), 1 inside worker processes.

    ``ivfuse eval`` on a folder already runs one process per core (see :func:`ivfuse.evaluate.evaluate_folder`).
    """
    if multiprocessing.parent_process() is not None:
        return 1
    cores = os.cpu_count() or 1
    env = os.environ.get("OMP_NUM_THREADS", "")
    return max(1, min(int(env) if env.isdigit() else cores, cores))


def fmi_map(a: np.ndarray, b: np.ndarray, f: np.ndarray, *, backend: str = "auto") -> np.ndarray:
    """Per-window fast-FMI of feature maps ``a``, ``b`` (sources) and ``f`` (fused): an (H-2)×(W-2) array.

    ``backend``: ``"numba"`` (compiled loops, ~13x faster per thread), ``"numpy"`` (vectorised over all windows)
    or ``"auto"`` (numba when installed). Both give the values of Tang's ``analysis_fmi.m`` (see the notes above).
    """
    a, b, f = (np.ascontiguousarray(x, dtype=np.float64) for x in (a, b, f))
    if not (a.shape == b.shape == f.shape) or a.ndim != 2 or min(a.shape) < 3:
        raise ValueError(f"fmi needs three equal 2-D arrays of at least 3x3, got {a.shape}, {b.shape}, {f.shape}")
    kernel = _fmi_kernel() if backend in ("auto", "numba") else None
    if backend == "numba" and kernel is None:
        raise ImportError("fmi backend 'numba' needs the numba package (pip install numba)")
    if kernel is None:
        return _fmi_map_numpy(a, b, f)
    out = np.empty((a.shape[0] - 2, a.shape[1] - 2))
    n = min(_fmi_threads(), out.shape[0])
    if n == 1:
        kernel(a, b, f, out, 0, out.shape[0])
    else:  # the compiled loops release the GIL: row blocks over threads (4 per thread to balance the load)
        edges = np.linspace(0, out.shape[0], min(4 * n, out.shape[0]) + 1).astype(int)
        with ThreadPoolExecutor(n) as ex:
            list(ex.map(lambda i: kernel(a, b, f, out, edges[i], edges[i + 1]), range(len(edges) - 1)))
    return out


def fmi_haghighat(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> float:
    """Haghighat & Razian fast-FMI (Tang's ``analysis_fmi.m``) on feature maps ``a``, ``b``, ``f``, 3×3 windows."""
    return float(fmi_map(a, b, f).mean())


@register_metric("fmi", reference="Tang analysis_fmi.m, feature 'none' (raw pixels), w = 3", min_size=3)
def fmi(F, A, B) -> float:
    """Fast feature mutual information (Haghighat 2014) on raw pixels, 3×3 windows."""
    return fmi_haghighat(A, B, F)


@register_metric("fmi_dct", reference="Tang analysis_fmi.m, feature 'dct' (orthonormal dct2), w = 3", min_size=3)
def fmi_dct(F, A, B) -> float:
    """Fast FMI on the orthonormal 2-D DCT coefficients of each image (MATLAB ``dct2``)."""
    return fmi_haghighat(*(dctn(x, type=2, norm="ortho") for x in (A, B, F)))


def _ncc(x: np.ndarray, y: np.ndarray) -> float:
    xi, yi = x.astype(np.int64).ravel(), y.astype(np.int64).ravel()
    h = np.bincount(xi * 256 + yi, minlength=65536).reshape(256, 256).astype(np.float64)
    h /= h.sum()

    def ent(p):
        return float(-(p * np.log2(p + (p == 0))).sum())

    return (ent(h.sum(0)) + ent(h.sum(1)) - ent(h)) / 8.0


@register_metric("qncie", reference="Liu et al. toolbox metricWang.m (nonlinear correlation information entropy)")
def qncie(F, A, B) -> float:
    """Wang et al.'s nonlinear correlation information entropy Q_NCIE (inputs min-max stretched to 0..255)."""
    a, b, f = normalize1(A), normalize1(B), normalize1(F)
    nab, naf, nbf = _ncc(a, b), _ncc(a, f), _ncc(b, f)
    R = np.array([[1, nab, naf], [nab, 1, nbf], [naf, nbf, 1]])
    r = np.linalg.eigvalsh(R)
    K = 3
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(r > 0, r * np.log2(np.where(r > 0, r, 1) / K) / K, 0.0)
    return float(1 + terms.sum() / np.log2(256))
