"""Analytic forward FLOPs of a built keras-pd network, counted from its layers' shapes."""

import math


def _build_shape(layer, key=None):
    shapes = getattr(layer, "_build_shapes_dict", None) or {}
    if key is not None and key in shapes:
        return tuple(shapes[key])
    for value in shapes.values():
        return tuple(value)
    return None


def _children(layer):
    return list(layer._flatten_layers(include_self=False, recursive=False))


def count_forward_flops(network):
    """Forward-pass FLOPs per example of a built network, counted from its layers' shapes.

    Conv2D: 2 * Ho * Wo * kh * kw * Cin * Cout / groups; Dense: 2 * in * out per position (the
    positions are the build shape's middle axes, or the enclosing attention block's L = H * W
    when those are unknown); AttentionBlock: 2 * 2 * L^2 * C for q k^T and weights v, plus its
    projections. Norms, activations and other elementwise work are ignored.

    Returns:
        dict with "total", "conv", "dense", "attention" and "uncounted" (names of leaf layers
        with weights that no rule covers).
    """
    import keras

    from keras_pd.networks.blocks import AttentionBlock
    from keras_pd.networks.layers import resolve_data_format

    counts = {"conv": 0, "dense": 0, "attention": 0}
    uncounted = []
    ignored = (keras.layers.GroupNormalization, keras.layers.LayerNormalization,
               keras.layers.BatchNormalization)

    def walk(layer, positions):
        if isinstance(layer, keras.layers.Conv2D):
            shape = _build_shape(layer)
            if layer.data_format == "channels_first":  # the UNet's layout on torch
                cin, h, w = int(shape[1]), int(shape[2]), int(shape[3])
            else:
                h, w, cin = int(shape[1]), int(shape[2]), int(shape[3])
            kh, kw = layer.kernel_size
            sh, sw = layer.strides
            if layer.padding == "same":
                ho, wo = math.ceil(h / sh), math.ceil(w / sw)
            else:
                ho, wo = (h - kh) // sh + 1, (w - kw) // sw + 1
            groups = getattr(layer, "groups", 1) or 1
            counts["conv"] += 2 * ho * wo * kh * kw * cin * layer.filters // groups
            return
        if isinstance(layer, keras.layers.Dense):
            shape = _build_shape(layer)
            middle = shape[1:-1]
            pos = math.prod(int(d) for d in middle) if all(d is not None for d in middle) \
                else positions
            counts["dense"] += 2 * pos * int(shape[-1]) * layer.units
            return
        if isinstance(layer, AttentionBlock):
            shape = [None] + [int(d) for d in _build_shape(layer, "x_shape")[1:]]
            if resolve_data_format(layer.data_format) == "channels_first":
                length, channels = shape[2] * shape[3], shape[1]
            else:
                length, channels = shape[1] * shape[2], shape[3]
            counts["attention"] += 2 * 2 * length * length * channels
            positions = length
        children = _children(layer)
        if not children and layer.weights and not isinstance(layer, ignored):
            uncounted.append(f"{type(layer).__name__}:{layer.name}")
        for child in children:
            walk(child, positions)

    walk(network, 1)
    return dict(counts, total=sum(counts.values()), uncounted=uncounted)
