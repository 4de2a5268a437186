"""The five server models, one module each: what the model is, what it gives up, which
processes it plans, and which runtime modules run them (docs/models.md compares them)."""

from __future__ import annotations

from collections.abc import Callable

from seda.plan.deployment import Plan
from seda.plan.models import amped, mp, seda, sped, symped

PLANS: dict[str, Callable[..., Plan]] = {
    "seda": seda.plan, "amped": amped.plan, "sped": sped.plan, "symped": symped.plan,
    "mp": mp.plan}
