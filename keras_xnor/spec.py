"""Facts that the Python package and the C++ kernels must agree on.

The C++ twin of this file is ``custom_ops/core/spec.h``; ``tests/test_spec.py`` checks
that the two say the same thing. Change both together.

Bit convention (one place, used everywhere):

* ``sign(x) = -1 if x < 0 else +1``: sign(0) = +1 (and sign(-0.0) = +1, sign(NaN) = +1).
* A packed word holds 32 channels. Channel ``c`` lives in word ``c // 32``, bit ``c % 32``
  (least significant bit first). A set bit means -1, a clear bit means +1.
* Channel padding bits (past the last channel) are 0 in activations and weights alike, so
  they XOR to 0 and add nothing to a popcount: ``dot = n - 2 * popcount(a XOR b)`` with
  ``n`` the real (unpadded) number of products.
* SAME padding: a padded tap contributes 0 to the dot (neither +1 nor -1), and 0 to K.
"""

OP_PREFIX = "KerasXnor"
PACK_BITS_OP = OP_PREFIX + "PackBits"
BIN_CONV2D_OP = OP_PREFIX + "BinConv2D"
BIN_DENSE_OP = OP_PREFIX + "BinDense"
PACK_FILTER_OP = OP_PREFIX + "PackFilter"

BITS_PER_WORD = 32
NEGATIVE_BIT = 1  # value of the bit that encodes -1
BIT_ORDER = "lsb_first"  # channel c -> bit c % 32 of word c // 32

ATTR_STRIDES = "strides"
ATTR_PADDING = "padding"
ATTR_DILATIONS = "dilations"
ATTR_IN_CHANNELS = "in_channels"
ATTR_USE_K = "use_k"
ATTR_RELU = "relu"

PADDING_SAME = "SAME"
PADDING_VALID = "VALID"

SPEC_VERSION = 1

# Kernel heights and widths the binary conv serves: 1 .. MAX_KERNEL_SIZE. The layers run a
# larger kernel as the float simulation, and export it that way.
MAX_KERNEL_SIZE = 11


def packed_words(channels: int) -> int:
    """Number of 32-bit words that hold ``channels`` sign bits."""
    return (int(channels) + BITS_PER_WORD - 1) // BITS_PER_WORD
