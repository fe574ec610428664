"""Layer-wise relevance propagation rules of Chefer et al. (CVPR 2021), in numpy.

Each rule takes what the layer saw in the forward pass and the relevance R of its
output, and returns the relevance of its input(s).  The rules are the ones the
method's reference (`baselines/ViT/ViT_LRP.py` and `layers_ours.py` of
hila-chefer/Transformer-Explainability) gives each layer, written here in closed
form instead of through autograd, so each one reads as its formula:

  gradient x input (the reference's default `RelProp`), for a layer y = f(x):
      R_x = x * J_f(x)^T (R / y)
    used for LayerNorm, GELU, tanh and softmax;
  alpha-beta with alpha = 1, beta = 0 (the reference's `Linear` and `Conv2d`):
      positive contributions only, the bias left out,
      Z = x+ W+ + x- W-,   R_x = x+ * (R/Z) W+^T + x- * (R/Z) W-^T;
  the product of two inputs, Z = a b (the reference's `einsum` / matmul):
      S = R / Z,  R_a = a * (S b^T),  R_b = b * (a^T S)
    (each input receives the full relevance; the attention halves both, as the
    reference does);
  an addition z = a + b (residual connections), renormalised so that the two
    parts keep the total and split it by the magnitudes of their raw shares;
  the maximum over tokens (SP-ViT's token-label head): all relevance to the winner.

`safe_divide` keeps R / Z finite where Z is 0 (the result is 0 there).  Arrays
are float64; relevance has the shape of the tensor it belongs to.
"""
import numpy as np

EPS = 1e-9


def safe_divide(a, b):
    """a / b with b pushed EPS away from 0 in its own sign, and 0 where b is exactly 0."""
    den = b + np.where(b >= 0, EPS, -EPS)
    return np.where(b == 0, 0., a / den)


def linear(x, weight, relevance):
    """Alpha-beta (alpha 1, beta 0) through y = x @ weight (+ bias, ignored), weight [in, out]."""
    wp, wn = np.maximum(weight, 0), np.minimum(weight, 0)
    xp, xn = np.maximum(x, 0), np.minimum(x, 0)
    s = safe_divide(relevance, xp @ wp + xn @ wn)
    return xp * (s @ wp.T) + xn * (s @ wn.T)


def _depthwise(x, weight):
    """Depthwise 'same' convolution without bias: x [C, H, W], weight [C, 1, k, k], stride 1."""
    k = weight.shape[-1]
    pad = np.pad(x, ((0, 0), (k // 2, k // 2), (k // 2, k // 2)))
    h, w = x.shape[1:]
    return sum(weight[:, 0, a, b, None, None] * pad[:, a:a + h, b:b + w] for a in range(k) for b in range(k))


def _depthwise_transposed(s, weight):
    """The adjoint of `_depthwise` applied to s [C, H, W] (the gradient it sends to its input)."""
    k = weight.shape[-1]
    h, w = s.shape[1:]
    out = np.zeros((s.shape[0], h + k - 1, w + k - 1))
    for a in range(k):
        for b in range(k):
            out[:, a:a + h, b:b + w] += weight[:, 0, a, b, None, None] * s
    return out[:, k // 2:k // 2 + h, k // 2:k // 2 + w]


def depthwise_conv(x, weight, relevance):
    """Alpha-beta (alpha 1, beta 0) through a depthwise 'same' conv (stride 1, bias ignored):
    x and relevance [C, H, W], weight [C, 1, k, k]."""
    wp, wn = np.maximum(weight, 0), np.minimum(weight, 0)
    xp, xn = np.maximum(x, 0), np.minimum(x, 0)
    s = safe_divide(relevance, _depthwise(xp, wp) + _depthwise(xn, wn))
    return xp * _depthwise_transposed(s, wp) + xn * _depthwise_transposed(s, wn)


def layer_norm(x, gamma, beta, eps, relevance):
    """Gradient x input through y = gamma * (x - mean) / sqrt(var + eps) + beta (last axis)."""
    mu = x.mean(-1, keepdims=True)
    sigma = np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps)
    xhat = (x - mu) / sigma
    s = safe_divide(relevance, gamma * xhat + beta) * gamma
    grad = (s - s.mean(-1, keepdims=True) - xhat * (s * xhat).mean(-1, keepdims=True)) / sigma
    return x * grad


def _erf(x):
    """The error function, elementwise (numpy has none; Paddle's, in float64)."""
    import paddle
    return paddle.erf(paddle.to_tensor(x, dtype='float64')).numpy()


def gelu(x, relevance):
    """Gradient x input through the exact (erf) GELU."""
    cdf = 0.5 * (1 + _erf(x / np.sqrt(2)))
    pdf = np.exp(-0.5 * x * x) / np.sqrt(2 * np.pi)
    return x * (cdf + x * pdf) * safe_divide(relevance, x * cdf)


def tanh(x, relevance):
    """Gradient x input through tanh."""
    y = np.tanh(x)
    return x * (1 - y * y) * safe_divide(relevance, y)


def softmax(x, relevance):
    """Gradient x input through the softmax over the last axis: with p = softmax(x),
    J^T (R / p) = R - p * sum(R), so R_x = x * (R - p * sum(R))."""
    p = np.exp(x - x.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return x * (relevance - p * relevance.sum(-1, keepdims=True))


def matmul(a, b, relevance):
    """(R_a, R_b) through Z = a @ b (batched over leading axes)."""
    s = safe_divide(relevance, a @ b)
    return a * (s @ np.swapaxes(b, -1, -2)), b * (np.swapaxes(a, -1, -2) @ s)


def add(a, b, relevance):
    """(R_a, R_b) through z = a + b: the shares a * R / z and b * R / z, each rescaled so
    that it sums to |its sum| / (|sum of a's| + |sum of b's|) of the total relevance."""
    s = safe_divide(relevance, a + b)
    ra, rb = a * s, b * s
    total, sa, sb = relevance.sum(), ra.sum(), rb.sum()
    norm = abs(sa) + abs(sb)
    return (ra * safe_divide(safe_divide(abs(sa), norm) * total, sa),
            rb * safe_divide(safe_divide(abs(sb), norm) * total, sb))


def token_max(tokens, relevance):
    """Relevance [classes] of max over tokens of `tokens` [N, classes] -> [N, classes]: each
    class's relevance goes to the token holding its maximum."""
    out = np.zeros_like(tokens)
    out[tokens.argmax(0), np.arange(tokens.shape[1])] = relevance
    return out
