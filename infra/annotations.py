"""Annotations the stack's Kubernetes objects carry for the tools that read them (pulumi-kubernetes, checkov)."""

from __future__ import annotations

from collections.abc import Mapping

# pulumi-kubernetes then creates or updates the object without waiting for it to become ready.
SKIP_AWAIT = {"pulumi.com/skipAwait": "true"}


def checkov_skips(skips: Mapping[str, str]) -> dict[str, str]:
    """checkov's per-object skip annotations: each skipped check with the reason it does not apply."""
    return {f"checkov.io/skip{i}": f"{check}={reason}" for i, (check, reason) in enumerate(skips.items(), start=1)}
