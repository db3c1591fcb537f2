"""Build the optional compiled VM loop (src/safeload/_vmfast.c).

Everything else is in pyproject.toml. ``optional=True``: on a machine with no
C compiler the install still succeeds and safeload runs its pure-Python VM.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "safeload._vmfast",
            ["src/safeload/_vmfast.c"],
            optional=True,
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
        )
    ]
)
