"""The ConvTranspose1d rewrite computes the same function and leaves the original alone."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from tinyexp.deploy.rewrite import rewrite_for_tflite  # noqa: E402


@pytest.mark.parametrize(
    "kernel, stride, padding, output_padding, dilation, groups",
    [
        (7, 2, 3, 1, 1, 1),  # the autoencoder's up-sampling layer
        (3, 1, 1, 0, 1, 1),
        (5, 3, 2, 2, 1, 1),  # output_padding reaching past what padding crops
        (4, 2, 1, 0, 2, 2),  # even kernel, dilation, groups
        (3, 2, 0, 1, 1, 1),  # no padding: left as it is
    ],
)
def test_sliced_conv_transpose_is_exact(kernel, stride, padding, output_padding, dilation,
                                        groups):
    torch.manual_seed(0)
    layer = nn.ConvTranspose1d(4, 6, kernel, stride=stride, padding=padding,
                               output_padding=output_padding, dilation=dilation, groups=groups)
    net = nn.Sequential(layer)
    copy, rewrites = rewrite_for_tflite(net)
    x = torch.randn(3, 4, 11)
    with torch.no_grad():
        assert torch.allclose(copy(x), net(x), atol=1e-5, rtol=0)
    assert len(rewrites) == (1 if padding else 0)
    assert net[0] is layer and layer.padding == (padding,)  # the original is untouched
    if padding:
        assert copy[0].conv.padding == (0,)
        assert rewrites[0].startswith("0: ConvTranspose1d(padding=")


def test_autoencoder_rewrite_is_exact():
    from tinyexp.models.cnn import ConvAutoencoder

    torch.manual_seed(0)
    net = ConvAutoencoder(in_channels=8, window=60).eval()
    copy, rewrites = rewrite_for_tflite(net)
    assert rewrites == [
        "decoder.0.0: ConvTranspose1d(padding=3) -> ConvTranspose1d(padding=0) + slice",
        "decoder.1.0: ConvTranspose1d(padding=3) -> ConvTranspose1d(padding=0) + slice",
    ]
    x = torch.randn(4, 60, 8)
    with torch.no_grad():
        assert (copy.eval()(x) - net(x)).abs().max() < 1e-5
    assert isinstance(net.decoder[0][0], nn.ConvTranspose1d)
