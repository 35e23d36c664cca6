"""Local lab: network namespaces (``netns``) and ``vpncloud lab up|down|status`` (``lab``, ``cli``)."""
