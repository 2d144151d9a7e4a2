"""S4D: a diagonal structured state-space (S4) sequence layer in pure PyTorch.

Source: A. Gu, K. Goel, A. Gupta, C. Ré, "On the Parameterization and Initialization of Diagonal
State Space Models", NeurIPS 2022 (arXiv:2206.11893) — S4D. Per channel h the layer is the
continuous-time SSM ``x'(t) = A x(t) + B u(t)``, ``y(t) = Re(C x(t)) + D u(t)`` with a diagonal
complex ``A`` (N/2 modes standing for N/2 complex-conjugate pairs, so the output is real),
discretised by zero-order hold (ZOH) with a learned step ``dt`` (S4D §3, "discretization")::

    Ā = exp(dt A),   B̄ = (exp(dt A) - 1) / A · B,
    x_k = Ā x_{k-1} + B̄ u_k,   y_k = Re(C x_k) + D u_k

Unrolled, the recurrence is the causal convolution ``y = K * u + D u`` with the Vandermonde
kernel (S4D §3, "Vandermonde kernel"; the factor 2 sums each mode with its conjugate)::

    K[l] = 2 Re( Σ_n C_n B̄_n Ā_n^l ),   l = 0 .. L-1

computed here without materialising the (H, N/2, L) tensor of powers (see
:func:`vandermonde_kernel`), and applied by FFT in O(L log L). Nothing CUDA-only: the same code
runs on CPU and GPU.
"""

from __future__ import annotations

import math

import torch
from torch import nn

# The S4 papers train A, B and dt with their own smaller learning rate and no weight decay:
# decay would drag log dt towards 0 (dt -> 1) and the imaginary parts of A towards 0, undoing
# the HiPPO initialisation.
S4_LR = 1e-3
INITS = ("legs", "lin")


def legs_diagonal(num_modes: int) -> torch.Tensor:
    """S4D-LegS eigenvalues: the diagonal of the normal part of HiPPO-LegS (S4D §4).

    HiPPO-LegS is ``A = S - P Pᵀ`` with ``P_n = sqrt(n + 1/2)`` and ``S`` normal (S4, Gu, Goel,
    Ré, ICLR 2022, §3): ``S = -I/2 + (skew-symmetric)``, so its eigenvalues are ``-1/2 + iω``
    with ``±ω`` the eigenvalues of the Hermitian ``i · skew``. One eigenvalue is kept per
    conjugate pair (``ω > 0``).

    Args:
        num_modes: N/2, the number of complex modes (state size N = 2 · num_modes).

    Returns:
        (num_modes,) complex128, imaginary parts ascending.
    """
    size = 2 * num_modes
    n = torch.arange(size, dtype=torch.float64)
    r = torch.sqrt(2 * n + 1)  # (N,)
    lower = n.unsqueeze(1) > n.unsqueeze(0)  # (N, N), True below the diagonal
    # A_nk = -r_n r_k below the diagonal, -(n + 1) on it, 0 above.
    hippo = -torch.where(lower, torch.outer(r, r), torch.diag(n + 1))  # (N, N)
    p = torch.sqrt(n + 0.5)  # (N,)
    skew = hippo + torch.outer(p, p) + 0.5 * torch.eye(size, dtype=torch.float64)  # (N, N)
    omega = torch.linalg.eigvalsh(1j * skew.to(torch.complex128))  # (N,) real, ascending
    return torch.complex(torch.full((num_modes,), -0.5, dtype=torch.float64), omega[num_modes:])


def lin_diagonal(num_modes: int) -> torch.Tensor:
    """S4D-Lin eigenvalues ``A_n = -1/2 + iπn``, n = 0 .. N/2-1 (S4D §4).

    Returns:
        (num_modes,) complex128.
    """
    n = torch.arange(num_modes, dtype=torch.float64)
    return torch.complex(torch.full_like(n, -0.5), math.pi * n)


def vandermonde_kernel(
    coeff: torch.Tensor, log_z: torch.Tensor, length: int, *, chunk: int | None = None
) -> torch.Tensor:
    """``K[..., l] = 2 Re(Σ_n coeff[..., n] · z_n^l)`` with ``z = exp(log_z)``, l < ``length``.

    Powers are split as ``z^(c·j + i) = z^(c·j) · z^i`` with a chunk ``c ≈ sqrt(L)``: only the
    (..., M, c) and (..., M, L/c) powers are formed, and one batched matmul contracts over the
    modes for every chunk at once. The (..., M, L) tensor of powers never exists, which is what
    makes a kernel of length 10^4 at H = 1024 cheaper than the convolution it feeds. The
    backward pass is written out (:class:`_VandermondeKernel`): autograd would keep a dozen
    (..., M, c)-sized intermediates per layer alive until backward.

    Args:
        coeff: (..., M) complex, e.g. ``C B̄`` per channel and mode.
        log_z: (..., M) complex, ``dt · A``; broadcast against ``coeff``.
        length: L, number of kernel taps.
        chunk: c; ``ceil(sqrt(L))`` when None.

    Returns:
        (..., L) real, in the real dtype matching ``coeff``.
    """
    chunk = chunk or max(1, math.isqrt(length - 1) + 1)
    return _VandermondeKernel.apply(coeff, log_z, length, chunk)


def _powers(log_z: torch.Tensor, count: int, stride: int = 1) -> torch.Tensor:
    """``z^(stride·k)`` for k = 0 .. count-1 with ``z = exp(log_z)``, (..., M, count) complex.

    By doubling: the powers so far times ``z^(stride·2^b)`` give the next 2^b of them, written in
    place. Only the log2(count) factors go through exp, cos and sin, each directly from
    ``log_z`` (not by squaring, which would compound rounding): on CPU the transcendentals
    over the whole block cost an order of magnitude more than these complex multiplications.
    """
    num_doublings = max(0, (count - 1).bit_length())
    real_dtype = log_z.real.dtype
    factor = stride * 2.0 ** torch.arange(num_doublings, device=log_z.device, dtype=real_dtype)
    factors = torch.polar(
        torch.exp(log_z.real.unsqueeze(-1) * factor), log_z.imag.unsqueeze(-1) * factor
    )  # (..., M, b): z^(stride·2^b)
    powers = torch.empty(*log_z.shape, 2**num_doublings, dtype=log_z.dtype, device=log_z.device)
    powers[..., 0] = 1.0
    for b in range(num_doublings):
        size = 2**b
        torch.mul(powers[..., :size], factors[..., b : b + 1], out=powers[..., size : 2 * size])
    return powers[..., :count]


class _VandermondeKernel(torch.autograd.Function):
    """:func:`vandermonde_kernel` with an analytic backward.

    With W = coeff, s = log_z, g = dL/dK and the chunked sums ``S0 = Σ_l g_l z^l`` and
    ``S1 = Σ_l l g_l z^l`` (the same two-level split as the forward pass, by matmul), the
    gradients in PyTorch's convention for complex inputs (dL/dRe + i dL/dIm) are
    ``2 conj(S0)`` for W and ``2 conj(W S1)`` for s. Only the two small inputs are saved; the
    powers are recomputed.
    """

    @staticmethod
    def forward(ctx, coeff: torch.Tensor, log_z: torch.Tensor, length: int, chunk: int):
        ctx.save_for_backward(coeff, log_z)
        ctx.length, ctx.chunk = length, chunk
        num_chunks = -(-length // chunk)
        inner = _powers(log_z, chunk)  # (..., M, c): z^i
        outer = coeff.unsqueeze(-1) * _powers(log_z, num_chunks, stride=chunk)  # (..., M, J)
        # K[c·j + i] = 2 Re Σ_n coeff_n z_n^(c·j) z_n^i: one matmul contracts the modes for every
        # (j, i) at once.
        kernel = torch.matmul(outer.transpose(-1, -2), inner)  # (..., J, M) @ (..., M, c)
        return (2.0 * kernel.real).flatten(-2)[..., :length]  # (..., J, c) -> (..., L)

    @staticmethod
    def backward(ctx, grad_kernel: torch.Tensor):
        coeff, log_z = ctx.saved_tensors
        length, chunk = ctx.length, ctx.chunk
        num_chunks, num_modes = -(-length // chunk), log_z.shape[-1]
        inner = _powers(log_z, chunk)  # (..., M, c)
        outer = _powers(log_z, num_chunks, stride=chunk).transpose(-1, -2)  # (..., J, M)
        g = nn.functional.pad(grad_kernel, (0, num_chunks * chunk - length))  # (..., J·c)
        g = g.unflatten(-1, (num_chunks, chunk))  # (..., J, c)
        steps = torch.arange(chunk, device=g.device, dtype=g.dtype)  # (c,): i
        # Per chunk j: P_j = Σ_i g[c·j+i] z^i and Q_j = Σ_i i g[c·j+i] z^i, by one real matmul
        # against [Re | Im] z^i interleaved per mode, read back as complex.
        rhs = torch.view_as_real(inner.transpose(-1, -2)).flatten(-2)  # (..., c, 2M)
        pq = torch.matmul(torch.cat([g, g * steps], dim=-2), rhs)  # (..., 2J, 2M)
        pq = torch.view_as_complex(pq.unflatten(-1, (num_modes, 2)))  # (..., 2J, M)
        p, q = pq.split(num_chunks, dim=-2)  # (..., J, M) each
        s0 = (outer * p).sum(-2)  # (..., M)
        # S1 sums l g_l z^l with l = c·j + i: Σ_j z^(c·j) (c·j P_j + Q_j).
        chunk_start = torch.arange(num_chunks, device=g.device, dtype=g.dtype) * chunk  # (J,)
        s1 = (outer * (chunk_start.unsqueeze(-1) * p + q)).sum(-2)  # (..., M)
        grad_coeff = grad_log_z = None
        if ctx.needs_input_grad[0]:
            grad_coeff = (2.0 * s0.conj()).sum_to_size(coeff.shape)
        if ctx.needs_input_grad[1]:
            grad_log_z = (2.0 * (coeff * s1).conj()).sum_to_size(log_z.shape)
        return grad_coeff, grad_log_z, None, None


def vandermonde_kernel_direct(
    coeff: torch.Tensor, log_z: torch.Tensor, length: int
) -> torch.Tensor:
    """Reference for :func:`vandermonde_kernel` that forms all (..., M, L) powers (tests only)."""
    steps = torch.arange(length, device=coeff.device, dtype=coeff.real.dtype)  # (L,)
    powers = torch.exp(log_z.unsqueeze(-1) * steps)  # (..., M, L)
    return 2.0 * (coeff.unsqueeze(-1) * powers).sum(dim=-2).real  # (..., L)


def circular_kernel(
    kernel: torch.Tensor, size: int, skip: torch.Tensor | None = None
) -> torch.Tensor:
    """Kernel(s) laid out for a circular convolution of length ``size`` >= 2L.

    Lags 0..L-1 of the causal kernel go to indices 0..L-1; the anti-causal kernel, if any, is
    shifted by one step (lag -1 - l gets ``kernel[1, :, l]``, stored at index ``size - 1 - l``)
    so that lag 0 is counted once. ``skip`` (the SSM's D) is a lag-0 tap: folding it in here
    saves a pass over the activations.

    Args:
        kernel: (H, L) causal kernel, or (2, H, L) = (causal, anti-causal) kernels.
        size: n, the FFT length; at least 2L so that no lag wraps around onto another.
        skip: (H,) weight of ``u[t]`` in ``y[t]``, or None.

    Returns:
        (H, n).
    """
    length = kernel.shape[-1]
    causal = kernel[0] if kernel.dim() == 3 else kernel  # (H, L)
    if skip is not None:
        causal = torch.cat([causal[:, :1] + skip.unsqueeze(-1), causal[:, 1:]], dim=-1)  # (H, L)
    circular = nn.functional.pad(causal, (0, size - length))  # (H, n)
    if kernel.dim() == 3:
        circular = circular + nn.functional.pad(kernel[1].flip(-1), (size - length, 0))  # (H, n)
    return circular


# Elements per FFT pass (B × channels × n): the transient buffers of a pass (padded input, its
# transform, their product, the inverse) stay at a few times this, whatever H. The smaller
# working set also ran faster here (H = 1024, L = 11,760: 3 passes of 356 channels).
FFT_BLOCK_ELEMENTS = 2**23


def _channel_blocks(batch: int, channels: int, size: int) -> list[tuple[int, int]]:
    """``(lo, hi)`` channel ranges of the FFT passes over (B, H, n) data."""
    step = max(1, FFT_BLOCK_ELEMENTS // (batch * size))
    return [(lo, min(lo + step, channels)) for lo in range(0, channels, step)]


class _CircularFFTConv(torch.autograd.Function):
    """``y = (k ⊛ u_pad)[:L]`` with k = :func:`circular_kernel`, by real FFTs of length n = 2L.

    A hand-written backward because autograd's, through rfft → product → irfft → slice, costs
    about three times as much here (complex FFTs of the full length, zero-filled gradients of
    slices and pads). With U, K, G the rfft of u, k and the (zero-padded) output gradient:
    ``dL/du = irfft(G · conj(K))[:L]`` and ``dL/dk = irfft(Σ_batch G · conj(U))``, read back
    into the kernels' and D's gradients. Transforms run along the contiguous last dim of
    (B, H, ·), several times faster than along dim 1 of (B, L, H), over blocks of channels.
    """

    @staticmethod
    def forward(ctx, u: torch.Tensor, kernel: torch.Tensor, skip: torch.Tensor | None):
        batch, length, channels = u.shape
        size = 2 * length
        k_f = torch.fft.rfft(circular_kernel(kernel, size, skip))  # (H, n/2 + 1)
        y = torch.empty_like(u)  # (B, L, H)
        u_fs = []
        for lo, hi in _channel_blocks(batch, channels, size):
            u_blk = u[:, :, lo:hi].transpose(1, 2).contiguous()  # (B, h, L)
            u_f = torch.fft.rfft(u_blk, n=size)  # (B, h, n/2 + 1)
            y_blk = torch.fft.irfft(u_f * k_f[lo:hi], n=size)[..., :length]  # (B, h, L)
            y[:, :, lo:hi] = y_blk.transpose(1, 2)
            u_fs.append(u_f)
        ctx.save_for_backward(k_f, *u_fs)
        ctx.kernel_shape = kernel.shape
        return y

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        k_f, *u_fs = ctx.saved_tensors
        batch, length, channels = grad_y.shape
        size = 2 * length
        need_u, need_kernel, need_skip = ctx.needs_input_grad
        grad_u = torch.empty_like(grad_y) if need_u else None  # (B, L, H)
        grad_kernel = grad_y.new_empty(ctx.kernel_shape) if need_kernel else None  # ([2,] H, L)
        grad_skip = grad_y.new_empty(channels) if need_skip else None  # (H,)
        for (lo, hi), u_f in zip(_channel_blocks(batch, channels, size), u_fs):
            g_blk = grad_y[:, :, lo:hi].transpose(1, 2).contiguous()  # (B, h, L)
            g_f = torch.fft.rfft(g_blk, n=size)  # (B, h, n/2 + 1)
            if need_u:
                gu = torch.fft.irfft(g_f * k_f[lo:hi].conj(), n=size)[..., :length]  # (B, h, L)
                grad_u[:, :, lo:hi] = gu.transpose(1, 2)
            if need_kernel or need_skip:
                gk = torch.fft.irfft((g_f * u_f.conj()).sum(0), n=size)  # (h, n) per lag
                if need_skip:
                    grad_skip[lo:hi] = gk[:, 0]
                if need_kernel and grad_kernel.dim() == 3:
                    grad_kernel[0, lo:hi] = gk[:, :length]
                    grad_kernel[1, lo:hi] = gk[:, length:].flip(-1)  # lag -1 - l at n - 1 - l
                elif need_kernel:
                    grad_kernel[lo:hi] = gk[:, :length]
        return grad_u, grad_kernel, grad_skip


def fft_conv(
    u: torch.Tensor, kernel: torch.Tensor, skip: torch.Tensor | None = None
) -> torch.Tensor:
    """Convolution along time by FFT: causal, or bidirectional with two kernels.

    Args:
        u: (B, L, H) input.
        kernel: (H, L) causal kernel, or (2, H, L) = (causal, anti-causal) kernels.
        skip: (H,) weight D of ``u[t]`` in ``y[t]``, or None.

    Returns:
        (B, L, H): ``y[t] = Σ_{s<=t} k[t-s] u[s] (+ Σ_{s>t} k_b[s-t-1] u[s]) + D u[t]``.
    """
    return _CircularFFTConv.apply(u, kernel, skip)


def mark_optim(param: nn.Parameter, *, lr: float, weight_decay: float = 0.0) -> nn.Parameter:
    """Tag ``param`` with its own optimiser settings, read by ``heads.optim.param_groups``."""
    param._optim = {"lr": lr, "weight_decay": weight_decay}
    return param


class S4D(nn.Module):
    """S4D layer: per-channel diagonal SSM convolution plus a D skip (S4D §3).

    Parameters (H = ``dim``, M = ``state_dim // 2`` complex modes):

    - ``log_dt`` (H,): log step, initialised log-uniform in [``dt_min``, ``dt_max``] (S4 / S4D).
    - ``log_neg_a_real``, ``a_imag`` (H, M): ``A = -exp(log_neg_a_real) + i a_imag``, so the real
      part stays negative (a stable SSM) whatever the updates (S4D §3).
    - ``b`` (H, M, 2): B as (real, imag), initialised to 1 as in S4D.
    - ``c`` (K, H, M, 2): C as (real, imag), complex normal; K = 2 if bidirectional.
    - ``d`` (H,): the skip ``D u``.

    ``log_dt``, A and B carry ``_optim = {"lr": lr, "weight_decay": 0.0}`` (the S4 / S4D
    training recipe: SSM parameters at lr 1e-3 without weight decay); C and D are ordinary
    weights, like a Linear's.

    Args:
        dim: H, channels (each has its own SSM).
        state_dim: N, state size per channel; N/2 complex modes. Must be even.
        init: ``legs`` (S4D-LegS, the default) or ``lin`` (S4D-Lin).
        dt_min: Smallest initial step.
        dt_max: Largest initial step.
        bidirectional: Add a second kernel (own C, shared A and dt) running backwards in time.
        lr: Learning rate of the SSM parameters (A, B, dt).
        chunk: Chunk c of the kernel computation; ``ceil(sqrt(L))`` when None.

    Forward:
        ``forward(u, mask=None)`` with u (B, L, H) and mask (B, L) bool, True at real tokens.
        Padded positions are zeroed before the convolution, so they never reach a real
        position: causally, padding appended at the end is in every real position's future;
        bidirectionally, the backward kernel does see the future, but only zeros there, and
        ``K[l]`` does not depend on L. Returns (B, L, H), zero at padded positions.

    Raises:
        ValueError: odd or non-positive ``state_dim``, unknown ``init``, bad dt range.
    """

    def __init__(
        self,
        *,
        dim: int,
        state_dim: int = 64,
        init: str = "legs",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        bidirectional: bool = False,
        lr: float = S4_LR,
        chunk: int | None = None,
    ):
        super().__init__()
        if state_dim < 2 or state_dim % 2:
            raise ValueError(
                f"S4D: state_dim must be even and >= 2 (conjugate pairs), got {state_dim}"
            )
        if init not in INITS:
            raise ValueError(f"S4D: unknown init {init!r}; valid inits: {', '.join(INITS)}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(
                f"S4D: need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}"
            )
        num_modes = state_dim // 2
        self.dim, self.state_dim = dim, state_dim
        self.bidirectional, self.chunk = bidirectional, chunk
        diag = (legs_diagonal if init == "legs" else lin_diagonal)(num_modes)  # (M,)
        diag = diag.to(torch.complex64).expand(dim, -1)  # (H, M)
        log_dt = torch.rand(dim) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        self.log_dt = mark_optim(nn.Parameter(log_dt), lr=lr)
        self.log_neg_a_real = mark_optim(nn.Parameter(torch.log(-diag.real).clone()), lr=lr)
        self.a_imag = mark_optim(nn.Parameter(diag.imag.clone()), lr=lr)
        b = torch.zeros(dim, num_modes, 2)
        b[..., 0] = 1.0
        self.b = mark_optim(nn.Parameter(b), lr=lr)
        num_kernels = 2 if bidirectional else 1
        # Complex standard normal: each of real and imaginary part has variance 1/2.
        self.c = nn.Parameter(torch.randn(num_kernels, dim, num_modes, 2) * math.sqrt(0.5))
        self.d = nn.Parameter(torch.randn(dim))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, state_dim={self.state_dim}, bidirectional={self.bidirectional}"

    def discretized(self) -> tuple[torch.Tensor, torch.Tensor]:
        """ZOH discretisation (S4D §3): ``log Ā = dt A`` and the kernel weights ``C B̄``.

        Returns:
            ``dt · A`` (H, M) complex and ``C B̄`` (K, H, M) complex.
        """
        a = torch.complex(-torch.exp(self.log_neg_a_real), self.a_imag)  # (H, M)
        dt_a = torch.exp(self.log_dt).unsqueeze(-1) * a  # (H, M)
        b_bar = (torch.exp(dt_a) - 1.0) / a * torch.view_as_complex(self.b)  # (H, M)
        c = torch.view_as_complex(self.c)  # (K, H, M)
        return dt_a, c * b_bar

    def kernel(self, length: int, *, direct: bool = False) -> torch.Tensor:
        """The convolution kernel(s) K, (K, H, L) with K = 1 (causal) or 2 (bidirectional).

        Args:
            length: L.
            direct: Form all powers at once (:func:`vandermonde_kernel_direct`); tests only.
        """
        dt_a, coeff = self.discretized()
        if direct:
            return vandermonde_kernel_direct(coeff, dt_a, length)
        return vandermonde_kernel(coeff, dt_a, length, chunk=self.chunk)

    def forward(self, u: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if u.dim() != 3 or u.shape[-1] != self.dim:
            raise ValueError(f"S4D(dim={self.dim}) takes (B, L, {self.dim}), got {tuple(u.shape)}")
        if u.shape[1] == 0:
            return u
        # Without padding the two `where` passes would only cost time (10^7 elements each).
        padded = mask is not None and not bool(mask.all())
        zero = torch.zeros((), dtype=u.dtype, device=u.device)
        if padded:
            # `where`, not a product: padding may hold NaN, and 0 * NaN is NaN.
            u = torch.where(mask.unsqueeze(-1), u, zero)
        # FFTs of half precision are slow or missing on CPU and lose the kernel's small taps.
        work = u if u.dtype in (torch.float32, torch.float64) else u.float()
        kernel = self.kernel(u.shape[1]).to(work.dtype)  # (K, H, L)
        y = fft_conv(work, kernel if self.bidirectional else kernel[0], skip=self.d.to(work.dtype))
        y = y.to(u.dtype)  # (B, L, H)
        return torch.where(mask.unsqueeze(-1), y, zero) if padded else y
