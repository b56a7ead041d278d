"""Output-identical rewrites of layers the TFLite converter cannot take as they are.

Each rewrite replaces a layer in a deep copy of the network by a composition of layers that
converts and computes the same function; the caller's network is never touched. The list of
what was rewritten goes into the export report, so a changed graph is never a surprise.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn


def _sliced_conv_transpose_1d() -> type:
    # The class is built on first use so that importing this module does not import torch.
    import torch
    from torch import nn

    class SlicedConvTranspose1d(nn.Module):
        """``ConvTranspose1d(padding=p)`` as the same layer with ``padding=0`` plus a slice.

        A transposed convolution's padding crops ``p`` outputs from each end of the full
        result, so computing the full result and slicing ``[p, p + L_out)`` is exact. The
        converter cannot legalize a padded transposed convolution (``mhlo.convolution`` with
        lhs dilation and padding) but converts the unpadded one and a SLICE.
        """

        def __init__(self, layer: nn.ConvTranspose1d) -> None:
            super().__init__()
            (pad,), (out_pad,) = layer.padding, layer.output_padding
            # output_padding appends outputs at the far end; with no padding to crop, only the
            # part reaching past the full result is still needed
            self.conv = nn.ConvTranspose1d(
                layer.in_channels, layer.out_channels, layer.kernel_size, stride=layer.stride,
                padding=0, output_padding=max(0, out_pad - pad), groups=layer.groups,
                bias=layer.bias is not None, dilation=layer.dilation,
            )
            self.conv.load_state_dict(layer.state_dict())
            self.start = pad
            self.trim = 2 * pad - out_pad + self.conv.output_padding[0]  # full minus wanted

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return y[..., self.start:y.shape[-1] - self.trim + self.start]

    return SlicedConvTranspose1d


def rewrite_for_tflite(net: nn.Module) -> tuple[nn.Module, list[str]]:
    """A deep copy of ``net`` with unconvertible layers replaced, and what was replaced.

    Returns:
        ``(copy, rewrites)``; each rewrite reads "<module path>: <old> -> <new>".
    """
    from torch import nn

    net = copy.deepcopy(net)
    rewrites: list[str] = []
    sliced = None
    for parent_name, parent in list(net.named_modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.ConvTranspose1d) and child.padding[0] > 0:
                if child.padding_mode != "zeros":
                    continue  # torch itself only supports zeros here
                sliced = sliced or _sliced_conv_transpose_1d()
                setattr(parent, name, sliced(child))
                path = f"{parent_name}.{name}" if parent_name else name
                rewrites.append(
                    f"{path}: ConvTranspose1d(padding={child.padding[0]}) -> "
                    f"ConvTranspose1d(padding=0) + slice"
                )
    return net, rewrites
