"""Loss weightings for the denoising objective (REFERENCE 3).

Each weighting is a mean squared error in one space: eps-MSE is x-MSE weighted by the SNR,
v-MSE by SNR + 1, so every weighting has an x-space form L = w(lambda) ||x - x_hat||^2
(`loss_weight`). The loss itself (`weighted_loss`) is computed in the weighting's own space,
as the authors' code does, which is better conditioned than multiplying x-errors by 1e8.
"""

from keras import ops

WEIGHTINGS = ("snr", "truncated_snr", "snr_plus_one", "constant")


def check_weighting(name):
    """Raises ValueError naming `weighting` when `name` is not one of WEIGHTINGS."""
    if name not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {name!r}; expected one of {', '.join(WEIGHTINGS)}")
    return name


def loss_weight(weighting, logsnr):
    """The x-space weight w(lambda) of a weighting (REFERENCE 3).

    snr: exp(lambda); truncated_snr: max(exp(lambda), 1); snr_plus_one: 1 + exp(lambda);
    constant: 1.

    Args:
        weighting: one of WEIGHTINGS.
        logsnr: lambda, any shape.

    Returns:
        w(lambda), the shape of `logsnr`.
    """
    check_weighting(weighting)
    snr = ops.exp(ops.convert_to_tensor(logsnr, "float32"))
    if weighting == "snr":
        return snr
    if weighting == "truncated_snr":
        return ops.maximum(snr, 1.0)
    if weighting == "snr_plus_one":
        return snr + 1.0
    return ops.ones_like(snr)


def _mean_per_example(err):
    return ops.mean(ops.reshape(ops.square(err), (ops.shape(err)[0], -1)), axis=1)


def weighted_loss(weighting, prediction, target):
    """Per-example loss between a Prediction and its target (REFERENCE 3).

    snr = eps-MSE; truncated_snr = max(x-MSE, eps-MSE); snr_plus_one = v-MSE; constant = x-MSE.

    Args:
        weighting: one of WEIGHTINGS.
        prediction: a `parameterization.Prediction` (x, eps, v).
        target: the Prediction the model should make (true x, eps, v, or a distillation target).

    Returns:
        Loss per example, shape [B].
    """
    check_weighting(weighting)
    if weighting == "snr":
        return _mean_per_example(prediction.eps - target.eps)
    if weighting == "snr_plus_one":
        return _mean_per_example(prediction.v - target.v)
    x_mse = _mean_per_example(prediction.x - target.x)
    if weighting == "constant":
        return x_mse
    return ops.maximum(x_mse, _mean_per_example(prediction.eps - target.eps))
