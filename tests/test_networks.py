"""Tests of keras_pd.networks (run once per KERAS_BACKEND, tiny configs)."""

import numpy as np
import pytest

import keras
from keras import ops

from keras_pd.networks import (
    PRESETS,
    AttentionBlock,
    MLPDenoiser,
    ResBlock,
    UNet,
    make_network,
    timestep_embedding,
)

B = 2


def _np(x):
    return ops.convert_to_numpy(x)


def _tiny_unet(**kwargs):
    cfg = dict(
        out_channels=3,
        ch=16,
        emb_ch=32,
        ch_mult=(1, 2),
        num_res_blocks=1,
        attn_resolutions=(4,),
        num_heads=2,
    )
    cfg.update(kwargs)
    return UNet(**cfg)


def _inputs(shape=(8, 8, 3), seed=0):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((B,) + shape).astype("float32")
    t = np.array([0.25, 0.75], dtype="float32")
    labels = np.array([0, 2], dtype="int32")
    return z, t, labels


def _perturb(layer, seed=1, scale=0.1):
    """Adds noise to every weight so that zero-initialised layers become active."""
    rng = np.random.default_rng(seed)
    for v in layer.weights:
        v.assign(_np(v) + scale * rng.standard_normal(v.shape).astype("float32"))


# ----------------------------------------------------------------- layers


def _np_timestep_embedding(t, dim, max_period=10000.0):
    # The official code's embedding: [sin(1000 t f_k), cos(1000 t f_k)],
    # f_k = max_period^(-k / (half - 1)), k = 0 .. half - 1, zero-padded to an odd dim.
    half = dim // 2
    k = np.arange(half, dtype=np.float64)
    freqs = max_period ** (-k / max(half - 1, 1))
    args = 1000.0 * np.asarray(t, np.float64)[:, None] * freqs[None, :]
    emb = np.concatenate([np.sin(args), np.cos(args)], axis=1)
    return np.pad(emb, [(0, 0), (0, dim % 2)])


@pytest.mark.parametrize("dim,max_period", [(8, 10000.0), (7, 10000.0), (16, 100.0), (2, 10.0)])
def test_timestep_embedding_values(dim, max_period):
    t = np.array([0.0, 1e-3, 0.0123, 0.25, 0.5, 1.0], dtype="float32")
    emb = _np(timestep_embedding(t, dim, max_period=max_period))
    assert emb.shape == (6, dim)
    # Every frequency, sine and cosine halves (arguments up to 1000: float32 error ~1e-4).
    np.testing.assert_allclose(emb, _np_timestep_embedding(t, dim, max_period), atol=2e-4)
    np.testing.assert_allclose(emb[0, : dim // 2], 0.0, atol=1e-6)  # sin(0)
    np.testing.assert_allclose(emb[0, dim // 2: 2 * (dim // 2)], 1.0, atol=1e-6)  # cos(0)
    if dim % 2:
        np.testing.assert_array_equal(emb[:, -1], 0.0)
    with pytest.raises(ValueError, match="dim >= 2"):
        timestep_embedding(t, 1)


def test_resblock_resampling_and_channels():
    x = np.random.default_rng(0).standard_normal((B, 8, 8, 16)).astype("float32")
    emb = np.ones((B, 32), dtype="float32")
    down = ResBlock(resample="down")
    assert tuple(down(x, emb).shape) == (B, 4, 4, 16)
    up = ResBlock(out_channels=32, resample="up")
    y = up(x, emb)
    assert tuple(y.shape) == (B, 16, 16, 32)
    assert up.nin_shortcut is not None and down.nin_shortcut is None
    # At init the residual branch is zero: the "down" block is an average pool.
    pooled = x.reshape(B, 4, 2, 4, 2, 16).mean(axis=(2, 4))
    np.testing.assert_allclose(_np(down(x, emb)), pooled, atol=1e-5)
    with pytest.raises(ValueError, match="resample"):
        ResBlock(resample="sideways")


def _w(variable):
    return _np(variable).astype(np.float64)


def _np_group_norm(x, groups, gamma, beta, eps=1e-6):
    # GroupNorm of a channels-last map: statistics per example over (H, W, channels of a group).
    b, h, w, c = x.shape
    g = x.reshape(b, h, w, groups, c // groups)
    mean = g.mean(axis=(1, 2, 4), keepdims=True)
    var = g.var(axis=(1, 2, 4), keepdims=True)
    return ((g - mean) / np.sqrt(var + eps)).reshape(b, h, w, c) * gamma + beta


def _silu(x):
    return x / (1.0 + np.exp(-x))


def _np_conv(x, kernel, bias):
    # "same" convolution (cross-correlation), stride 1, channels-last.
    kh, kw = kernel.shape[:2]
    pad = np.pad(x, [(0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)])
    h, w = x.shape[1:3]
    out = sum(np.einsum("bhwc,co->bhwo", pad[:, i:i + h, j:j + w], kernel[i, j])
              for i in range(kh) for j in range(kw))
    return out + bias


def _np_attention(x, heads, layer):
    # softmax(q k^T / sqrt(head_dim)) v per head on GroupNorm(x), q | k | v the three thirds of
    # the fused projection (heads contiguous in each), output projection, residual add.
    b, h, w, c = x.shape
    hd = c // heads
    n = _np_group_norm(x, 32, _w(layer.norm.gamma), _w(layer.norm.beta))  # 64 channels
    qkv = n.reshape(b, h * w, c) @ _w(layer.qkv.kernel) + _w(layer.qkv.bias)
    q, k, v = (qkv[..., i * c:(i + 1) * c].reshape(b, h * w, heads, hd).transpose(0, 2, 1, 3)
               for i in range(3))
    logits = q @ k.transpose(0, 1, 3, 2) / np.sqrt(hd)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    out = (weights @ v).transpose(0, 2, 1, 3).reshape(b, h * w, c)
    out = out @ _w(layer.proj_out.kernel) + _w(layer.proj_out.bias)
    return x + out.reshape(b, h, w, c)


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_attention_block_matches_numpy(data_format):
    x = np.random.default_rng(0).standard_normal((B, 4, 2, 64)).astype("float32")
    attn = AttentionBlock(head_dim=16, data_format=data_format)
    first = data_format == "channels_first"
    x_in = x.transpose(0, 3, 1, 2) if first else x
    np.testing.assert_allclose(_np(attn(x_in)), x_in, atol=1e-6)  # zero output projection
    assert attn._heads == 4
    _perturb(attn, scale=0.3)
    y = _np(attn(x_in))
    if first:
        y = y.transpose(0, 2, 3, 1)
    want = _np_attention(x.astype(np.float64), 4, attn)
    assert np.abs(want - x).max() > 0.3  # the attention branch is far from zero
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="num_heads"):
        AttentionBlock(num_heads=3)(x)


@pytest.mark.parametrize("out_channels,resample,data_format", [
    (None, None, "channels_last"), (96, "down", "channels_last"), (96, "up", "channels_last"),
    (96, "down", "channels_first")])
def test_resblock_with_groupnorm_conditioning_matches_numpy(out_channels, resample, data_format):
    # h = swish(GN(x)); resample h and x; conv3x3; scale, shift = Dense(swish(emb));
    # h = swish(GN(h) (1 + scale) + shift); conv3x3; skip (1x1 conv if channels change) + h.
    # 64 and 96 channels: 32 groups of 2 and of 3 channels.
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, 4, 4, 64)).astype("float32")
    emb = rng.standard_normal((B, 16)).astype("float32")  # a different embedding per example
    block = ResBlock(out_channels=out_channels, resample=resample, data_format=data_format)
    first = data_format == "channels_first"  # the fused group norm on torch (torch_ops)

    def apply(e):
        y = _np(block(x.transpose(0, 3, 1, 2) if first else x, e))
        return y.transpose(0, 2, 3, 1) if first else y

    apply(emb)
    _perturb(block, scale=0.2)
    got = apply(emb)
    out = 64 if out_channels is None else out_channels

    def resample_np(a):
        if resample == "up":
            return a.repeat(2, axis=1).repeat(2, axis=2)
        if resample == "down":
            b, h, w, c = a.shape
            return a.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))
        return a

    x64 = x.astype(np.float64)
    h = _silu(_np_group_norm(x64, 32, _w(block.norm1.gamma), _w(block.norm1.beta)))
    h = _np_conv(resample_np(h), _w(block.conv1.kernel), _w(block.conv1.bias))
    emb_out = _silu(emb.astype(np.float64)) @ _w(block.temb_proj.kernel) + _w(
        block.temb_proj.bias)
    scale, shift = emb_out[:, None, None, :out], emb_out[:, None, None, out:]
    h = _np_group_norm(h, 32, _w(block.norm2.gamma), _w(block.norm2.beta)) * (1 + scale) + shift
    h = _np_conv(_silu(h), _w(block.conv2.kernel), _w(block.conv2.bias))
    skip = resample_np(x64)
    if out_channels is not None:
        skip = _np_conv(skip, _w(block.nin_shortcut.kernel), _w(block.nin_shortcut.bias))
    want = skip + h
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-4)
    # The conditioning matters: swapping the two examples' embeddings moves the output.
    swapped = apply(emb[::-1])
    assert np.abs(swapped - got).max() > 0.1


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="PyTorch's memory formats")
@pytest.mark.parametrize("modulated", [False, True])
def test_torch_group_norm_keeps_a_channels_last_input_in_its_layout(modulated):
    # What Keras' convolutions on torch return: NCHW with channels-last strides. The fused group
    # norm (computed dense) gives the numpy result and hands the same layout on.
    import torch

    from keras_pd import torch_ops

    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4, 4, 64)).astype("float32")  # NHWC
    gamma, beta = (rng.standard_normal(64).astype("float32") for _ in range(2))
    scale, shift = (0.3 * rng.standard_normal((3, 64)).astype("float32") for _ in range(2))
    want = _np_group_norm(x.astype(np.float64), 32, gamma, beta)
    t = torch.from_numpy(x).permute(0, 3, 1, 2)  # a view: channels-last strides
    assert t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
    args = (torch.from_numpy(gamma), torch.from_numpy(beta), 1e-6)
    if modulated:
        want = want * (1 + scale[:, None, None]) + shift[:, None, None]
        out = torch_ops.group_norm(t, 32, *args, torch.from_numpy(scale)[:, :, None, None],
                                   torch.from_numpy(shift)[:, :, None, None])
    else:
        out = torch_ops.group_norm(t, 32, *args)
    assert out.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_allclose(out.permute(0, 2, 3, 1).numpy(), want, rtol=1e-5, atol=2e-5)


def test_class_one_hot_values_and_null_label():
    # Labels 0..K-1 give one-hot rows, the null label K a zero row, for [B] and [B, 1] labels.
    from keras_pd.networks.layers import class_one_hot

    labels = np.array([0, 3, 2, 1, 3, 0], "int32")
    want = np.array([[1, 0, 0], [0, 0, 0], [0, 0, 1], [0, 1, 0], [0, 0, 0], [1, 0, 0]])
    for form in (labels, labels[:, None], labels.astype("int64")):
        got = _np(class_one_hot(form, 3))
        assert got.shape == (6, 3) and got.dtype == np.float32
        np.testing.assert_array_equal(got, want)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="a TensorFlow graph check")
def test_class_one_hot_graph_has_no_strided_slice():
    # `known[:, None]` gives the same numbers as ops.expand_dims, so only the graph tells them
    # apart: TensorFlow traces it as a StridedSlice with new_axis_mask (the indexing REFERENCE 8
    # and the layers' docstring rule out for export), expand_dims as ExpandDims. A LiteRT
    # conversion cannot tell either: today's converter accepts that StridedSlice as the
    # built-in STRIDED_SLICE (checked on the old code: no Flex op), so the graph is the test.
    import tensorflow as tf

    from keras_pd.networks.layers import class_one_hot

    fn = tf.function(lambda labels: class_one_hot(labels, 3), autograph=False)
    graph = fn.get_concrete_function(tf.TensorSpec([None], tf.int32)).graph
    new_axis = [op.name for op in graph.get_operations()
                if op.type == "StridedSlice" and op.get_attr("new_axis_mask")]
    assert not new_axis, new_axis
    assert "ExpandDims" in {op.type for op in graph.get_operations()}


# ----------------------------------------------------------------- UNet


def test_unet_shapes_and_zero_output_at_init():
    z, t, _ = _inputs()
    net = _tiny_unet(out_channels=6)
    y = _np(net(z, t))
    assert y.shape == (B, 8, 8, 6)
    assert np.all(y == 0.0)  # zero-initialised output conv
    kinds = [type(layer).__name__ for layer in net.down_layers + net.up_layers]
    assert "AttentionBlock" in kinds  # attention at resolution 4
    assert tuple(net.compute_output_shape((None, 8, 8, 3))) == (None, 8, 8, 6)


def test_unet_depends_on_t_and_labels():
    z, t, labels = _inputs()
    net = _tiny_unet(num_classes=3)
    y = _np(net(z, t, labels))
    assert y.shape == (B, 8, 8, 3) and np.all(y == 0.0)
    _perturb(net)
    y0 = _np(net(z, t, labels))
    y_t = _np(net(z, t + 0.1, labels))
    y_l = _np(net(z, t, np.array([1, 1], dtype="int32")))
    assert np.abs(y0).max() > 0
    assert np.abs(y0 - y_t).max() > 1e-4
    assert np.abs(y0 - y_l).max() > 1e-4
    with pytest.raises(ValueError, match="labels"):
        net(z, t)


def test_unet_dropout_only_in_training():
    z, t, _ = _inputs()
    net = _tiny_unet(dropout=0.5)
    net(z, t)
    _perturb(net)
    a, b = _np(net(z, t)), _np(net(z, t))
    np.testing.assert_array_equal(a, b)
    c = _np(net(z, t, training=True))
    assert np.abs(a - c).max() > 1e-4


def test_unet_wrong_shape_raises():
    z, t, _ = _inputs()
    net = _tiny_unet()
    net(z, t)
    z16, _, _ = _inputs((16, 16, 3))
    with pytest.raises(ValueError, match=r"16, 16"):
        net(z16, t)
    with pytest.raises(ValueError, match=r"\(7, 7, 3\)"):
        _tiny_unet().build((None, 7, 7, 3))  # not divisible by 2
    with pytest.raises(ValueError, match="image_size"):
        _tiny_unet(image_size=16).build((None, 8, 8, 3))


def test_unet_config_round_trip():
    z, t, labels = _inputs()
    net = _tiny_unet(num_classes=3, head_dim=8, image_size=(8, 8), name="unet_rt")
    net(z, t, labels)
    _perturb(net)
    config = net.get_config()
    clone = UNet.from_config(config)
    clone(z, t, labels)
    clone.set_weights(net.get_weights())
    np.testing.assert_allclose(_np(clone(z, t, labels)), _np(net(z, t, labels)), atol=1e-5)
    assert clone.get_config() == config
    # Through keras.saving's generic (de)serialisation, too.
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(net))
    assert isinstance(restored, UNet) and restored.get_config() == config


def test_unet_channels_first_matches_channels_last():
    # Non-square input (8x16) so that a swapped H/W axis would show; attention with 2 heads,
    # class conditioning, up/down resampling and 1x1 shortcuts are all on the path.
    z, t, labels = _inputs((8, 16, 3))
    nets = {}
    for fmt in ("channels_last", "channels_first"):
        nets[fmt] = _tiny_unet(num_classes=3, data_format=fmt)
        nets[fmt].build((None, 8, 16, 3), (None,))
        assert nets[fmt].resolved_data_format == fmt
        assert nets[fmt].conv_in.data_format == fmt
    last, first = nets["channels_last"], nets["channels_first"]
    assert [tuple(v.shape) for v in first.weights] == [tuple(v.shape) for v in last.weights]
    assert [v.path.split("/", 1)[1] for v in first.weights] == [
        v.path.split("/", 1)[1] for v in last.weights
    ]
    _perturb(last)
    first.set_weights(last.get_weights())
    y_last = _np(last(z, t, labels))
    if keras.backend.backend() == "tensorflow":
        # TensorFlow's CPU Conv2D kernels are NHWC only; XLA (how keras-pd trains on TF)
        # compiles the channels-first graph.
        import tensorflow as tf

        y_first = _np(tf.function(lambda *a: first(*a), jit_compile=True)(z, t, labels))
    else:
        y_first = _np(first(z, t, labels))
    assert y_first.shape == (B, 8, 16, 3) and np.abs(y_last).max() > 0.1
    np.testing.assert_allclose(y_first, y_last, atol=1e-5)
    assert tuple(first.compute_output_shape((None, 8, 16, 3))) == (None, 8, 16, 3)


def test_unet_default_data_format_resolves_per_backend():
    expected = "channels_first" if keras.backend.backend() == "torch" else "channels_last"
    z, t, _ = _inputs()
    net = _tiny_unet()
    net(z, t)
    assert net.data_format is None and net.resolved_data_format == expected
    assert net.conv_in.data_format == expected and net.mid_attn_1._fmt == expected
    config = net.get_config()
    assert config["data_format"] is None  # not frozen to this backend's layout
    clone = UNet.from_config(config)
    clone(z, t)
    assert clone.get_config() == config and clone.resolved_data_format == expected
    # Configs saved before the option existed load with the default.
    del config["data_format"]
    old = UNet.from_config(config)
    assert old.data_format is None and old.resolved_data_format == expected
    explicit = _tiny_unet(data_format="channels_last")
    assert explicit.get_config()["data_format"] == "channels_last"
    with pytest.raises(ValueError, match="data_format"):
        _tiny_unet(data_format="NHWC")


def test_unet_saves_in_keras_model(tmp_path):
    z, t, _ = _inputs()
    z_in = keras.Input((8, 8, 3))
    t_in = keras.Input(())
    net = _tiny_unet(num_heads=1)
    model = keras.Model([z_in, t_in], net(z_in, t_in))
    _perturb(net)
    path = str(tmp_path / "unet.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(_np(loaded([z, t])), _np(model([z, t])), atol=1e-5)


# ----------------------------------------------------------------- MLP


def test_mlp_shapes_zero_init_and_conditioning():
    rng = np.random.default_rng(0)
    _, t, labels = _inputs()
    x = rng.standard_normal((B, 5)).astype("float32")
    net = MLPDenoiser(out_dim=10, width=32, num_blocks=2, emb_dim=16, num_classes=3)
    y = _np(net(x, t, labels))
    assert y.shape == (B, 10) and np.all(y == 0.0)
    _perturb(net)
    y0 = _np(net(x, t, labels))
    assert np.abs(y0 - _np(net(x, t + 0.1, labels))).max() > 1e-4
    assert np.abs(y0 - _np(net(x, t, np.array([1, 1], dtype="int32")))).max() > 1e-4
    with pytest.raises(ValueError, match=r"\(2, 6\)"):
        net(np.zeros((B, 6), dtype="float32"), t, labels)


def test_mlp_on_images_and_round_trip():
    z, t, _ = _inputs((8, 8, 1))
    net = MLPDenoiser(out_dim=2, width=32, num_blocks=2, emb_dim=16)
    assert tuple(net(z, t).shape) == (B, 8, 8, 2)
    _perturb(net)
    clone = MLPDenoiser.from_config(net.get_config())
    clone(z, t)
    clone.set_weights(net.get_weights())
    np.testing.assert_allclose(_np(clone(z, t)), _np(net(z, t)), atol=1e-5)


# ----------------------------------------------------------------- presets


def test_small_presets_build_and_run():
    z, t, labels = _inputs((8, 8, 1))
    for name in ("digits", "digits_mlp"):
        net = make_network(name, (8, 8, 1), 2, num_classes=10)
        assert net.dropout == PRESETS[name]["dropout"]
        assert tuple(net(z, t, labels).shape) == (B, 8, 8, 2)
        if name == "digits":
            assert 0.2e6 < net.count_params() < 0.5e6
    assert make_network("digits", (8, 8, 1), 1, dropout=0.0, build=False).dropout == 0.0
    toy = make_network("toy2d", (2,), 2)
    assert tuple(toy(z[:, 0, :2, 0], t).shape) == (B, 2)
    assert isinstance(make_network("mnist", (28, 28, 1), 1, build=False), UNet)
    small = make_network("mnist_small", (28, 28, 1), 1)
    assert 0.3e6 < small.count_params() < 0.4e6


def test_preset_errors():
    with pytest.raises(ValueError, match="no_such_net") as info:
        make_network("no_such_net", (8, 8, 1), 1)
    assert "cifar10" in str(info.value)
    with pytest.raises(ValueError, match=r"\(28, 30, 1\)"):
        make_network("cifar10", (28, 30, 1), 1)  # 30 not divisible by 4
    with pytest.raises(ValueError, match=r"\(64,\)"):
        make_network("digits", (64,), 1)


@pytest.mark.slow
def test_cifar10_preset_param_count():
    net = make_network("cifar10", (32, 32, 3), 3)
    # Paper-scale network: 60.0M parameters with this implementation.
    assert 35e6 < net.count_params() < 65e6
    assert net.dropout == 0.2


@pytest.mark.parametrize("kind", ["unet", "mlp"])
def test_dropout_acts_in_training_only_through_every_sublayer_call(kind):
    # The blocks hand `training` on to their dropout themselves (call_sublayer): in training
    # two calls draw different masks and leave the inference output; in inference the network
    # is deterministic. (Perturbed weights: the zero-initialised output layers would hide it.)
    z, t, _ = _inputs()
    if kind == "unet":
        net = _tiny_unet(dropout=0.5)
    else:
        net = MLPDenoiser(out_dim=3, width=32, num_blocks=2, emb_dim=16, dropout=0.5)
    net(z, t)
    _perturb(net, scale=0.3)
    inference = _np(net(z, t, training=False))
    np.testing.assert_array_equal(_np(net(z, t)), inference)
    first, second = _np(net(z, t, training=True)), _np(net(z, t, training=True))
    assert np.abs(first - second).max() > 1e-3
    assert np.abs(first - inference).max() > 1e-3


@pytest.mark.skipif(keras.backend.backend() != "torch",
                    reason="the direct sub-layer calls are torch's eager path")
@pytest.mark.parametrize("kind", ["unet", "mlp"])
def test_direct_sublayer_calls_equal_keras_layer_calls(kind, monkeypatch):
    # call_sublayer's direct `layer.call` gives exactly what Keras' `Layer.__call__` gives,
    # gradients included.
    import torch

    from keras_pd.networks import layers

    z, t, labels = _inputs()
    if kind == "unet":
        net = _tiny_unet(num_classes=3)
    else:
        net = MLPDenoiser(out_dim=3, width=32, num_blocks=2, emb_dim=16, num_classes=3)
    net(z, t, labels)
    _perturb(net, scale=0.3)

    def outputs_and_grads():
        out = net(z, t, labels)
        grads = torch.autograd.grad(out.square().sum(), [v.value for v in net.trainable_weights])
        return _np(out), [g.numpy() for g in grads]

    direct, taken = layers._eager_torch_float32, []
    monkeypatch.setattr(layers, "_eager_torch_float32",
                        lambda layer, args: taken.append(direct(layer, args)) or taken[-1])
    fast, fast_grads = outputs_and_grads()
    assert taken and all(taken)  # every sub-layer call took the direct path
    monkeypatch.setattr(layers, "_eager_torch_float32", lambda layer, args: False)
    slow, slow_grads = outputs_and_grads()
    np.testing.assert_array_equal(fast, slow)
    for a, b in zip(fast_grads, slow_grads):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_nearest_upsampling_and_average_pooling_against_numpy(data_format):
    # 2x nearest copies every pixel into a 2x2 block; 2x2 average pooling undoes it exactly.
    from keras_pd.networks.layers import downsample_avg, upsample_nearest

    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5)).astype("float32")  # NHWC
    want = np.repeat(np.repeat(x, 2, axis=1), 2, axis=2)
    if data_format == "channels_first":
        x, want = x.transpose(0, 3, 1, 2), want.transpose(0, 3, 1, 2)
    up = _np(upsample_nearest(ops.convert_to_tensor(x), data_format))
    np.testing.assert_array_equal(up, want)
    np.testing.assert_allclose(_np(downsample_avg(ops.convert_to_tensor(up), data_format)), x,
                               rtol=1e-6)


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="the torch kernel's gradient")
def test_torch_upsampling_gradient_sums_each_block():
    # The gradient of nearest 2x upsampling sums the upstream gradient over each 2x2 block.
    import torch

    from keras_pd.networks.layers import upsample_nearest

    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.standard_normal((2, 3, 4, 5)).astype("float32")).requires_grad_()
    g = rng.standard_normal((2, 3, 8, 10)).astype("float32")
    upsample_nearest(x, "channels_first").backward(torch.from_numpy(g))
    want = g.reshape(2, 3, 4, 2, 5, 2).sum(axis=(3, 5))
    np.testing.assert_allclose(x.grad.numpy(), want, rtol=1e-5, atol=1e-6)
