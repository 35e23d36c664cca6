"""The optional C kernels of the data plane (vpncloud/fastpath/_kernels.c, issue 21).

Everything else is in pyproject.toml. ``optional=True``: without a compiler or OpenSSL's headers
the build of the extension fails, the install still succeeds and the daemon runs the Python twin.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "vpncloud.fastpath._kernels",
            ["vpncloud/fastpath/_kernels.c"],
            libraries=["crypto"],
            optional=True,
        )
    ]
)
