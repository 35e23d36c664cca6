"""The WebSocket proxy server (spec 16): ``vpncloud ws-proxy``.

The framing it shares with the node lives in :mod:`vpncloud.core.proxy_framing`, the node's client
socket in :mod:`vpncloud.daemon.proxy_client`: the daemon uses the proxy's protocol, never this
program, so the daemon does not import this package (no import circle, tests/test_imports.py).
"""
