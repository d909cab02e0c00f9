"""modaflow.core: the shared flow-matching engine (torch + numpy only).

Time convention (DESIGN.md): ``t`` is a float in [0, 1] of shape ``(B,)``; ``t = 0`` is the
source (noise, or the source modality) and ``t = 1`` the target (data);
``x_t = alpha(t) * x1 + sigma(t) * x0`` (``+ gamma(t) * z`` for stochastic interpolants).

Submodules are imported explicitly (``from modaflow.core.paths import LinearPath``) so that
importing the package stays cheap and optional dependencies stay lazy.
"""
