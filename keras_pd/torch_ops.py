"""PyTorch backend only: convolutions with their bias, group normalisation with the
time-embedding modulation as two kernels, nearest-neighbour upsampling as one, and the input
check of the direct sub-layer calls (`networks.layers.call_sublayer`).

Keras' `GroupNormalization` is written with `keras.ops`: a reshape into groups, `moments`, an
rsqrt and four broadcast multiply-adds. JAX and TensorFlow (XLA) fuse those into one or two
kernels; eager PyTorch runs each op and each op's backward, so on the digits UNet the group
norms alone cost more than the convolutions' forward (docs/performance.md, "Against a plain
PyTorch loop"). PyTorch has the whole normalisation as one native kernel with its own backward,
`torch.nn.functional.group_norm`. The ResBlock's modulation is folded in as one fused
multiply-add, with the per-channel factors computed at [B, C]:

    GN(x) * (1 + scale) + shift = x_hat * (gamma * (1 + scale)) + (beta * (1 + scale) + shift)

where x_hat is x normalised per (example, group). The weights (gamma, beta) are Keras' own, so
checkpoints are interchangeable with the unfused layer; the result matches it to float32
rounding (tests/test_networks.py).
"""


def group_norm(x, groups, gamma, beta, epsilon, scale=None, shift=None):
    """Group normalisation of a channels-first torch tensor, optionally modulated.

    Args:
        x: torch tensor [B, C, ...].
        groups: int, number of groups (divides C).
        gamma, beta: torch tensors [C], the affine weights.
        epsilon: float, added to the variance.
        scale, shift: None, or torch tensors broadcastable to [B, C, 1, ...]: the output is
            then `GN(x) * (1 + scale) + shift`.

    Returns:
        A torch tensor of the shape of `x`.
    """
    import torch

    # Keras' convolutions on torch return channels-last strides (their kernel is a permuted
    # view); PyTorch's group-norm kernels are 3-7x slower on that layout than a copy into the
    # dense one and back (docs/performance.md), so the normalisation runs dense.
    channels_last = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(
        memory_format=torch.channels_last)
    x = x.contiguous()
    if scale is None and shift is None:
        out = torch.nn.functional.group_norm(x, groups, gamma, beta, epsilon)
    else:
        x_hat = torch.nn.functional.group_norm(x, groups, None, None, epsilon)
        view = (1, -1) + (1,) * (x.dim() - 2)
        gamma, beta = gamma.view(view), beta.view(view)
        factor = gamma if scale is None else gamma * (1.0 + scale)
        offset = beta if scale is None else beta * (1.0 + scale)
        if shift is not None:
            offset = offset + shift
        out = torch.addcmul(offset, x_hat, factor)
    return out.contiguous(memory_format=torch.channels_last) if channels_last else out


def conv2d(x, kernel, bias, padding, dilation_rate):
    """Stride-1 2-D convolution of a channels-first torch tensor, its bias added in the kernel.

    The kernel is passed as Keras' torch backend passes it (a permuted view of the [kh, kw, in,
    out] variable), so the result has the layout Keras' own convolution gives; the bias is
    PyTorch's `conv2d` argument instead of a broadcast add after it (one kernel less, and no
    `sum` over batch and space in the backward).

    Args:
        x: torch tensor [B, in, H, W].
        kernel: torch tensor [kh, kw, in, out].
        bias: torch tensor [out].
        padding: "same" or "valid" (Keras' convention; equal to PyTorch's at stride 1).
        dilation_rate: tuple of two ints.

    Returns:
        A torch tensor [B, out, H', W'].
    """
    import torch

    return torch.nn.functional.conv2d(x, kernel.permute(3, 2, 0, 1), bias,
                                      padding=padding.lower(), dilation=tuple(dilation_rate))


def upsample_nearest(x):
    """Nearest-neighbour 2x upsampling of a channels-first torch tensor, as one kernel.

    Equal to repeating every row and column twice (`ops.repeat` on both spatial axes), which
    the torch backend runs as two `repeat_interleave`s whose backward is an index-add; PyTorch's
    nearest `interpolate` is one kernel each way (docs/performance.md).

    Args:
        x: torch tensor [B, C, H, W].

    Returns:
        A torch tensor [B, C, 2H, 2W].
    """
    import torch

    return torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest")


def plain_float32_tensors(args):
    """Whether every argument is an eager float32 torch tensor without a Keras mask: the
    inputs for which Keras' `Layer.__call__` converts, casts and masks nothing.

    Args:
        args: the positional arguments of a layer call.

    Returns:
        bool.
    """
    import torch

    return all(isinstance(a, torch.Tensor) and a.dtype == torch.float32
               and getattr(a, "_keras_mask", None) is None for a in args)
