"""A wire-compatible Python re-implementation of VpnCloud 2.4."""

__version__ = "0.1.0"
#: What ``--version`` prints; the original prints ``VpnCloud v2.4.0``.
ORIGINAL_VERSION = "2.4.0"
