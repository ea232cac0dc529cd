"""Aliases for resources that moved from one component to another, so that deployed stacks keep them.

A resource's URN holds its parent's type, so moving it into another component changes its URN, and without an alias
Pulumi would create it anew and delete the old one: a new admin key, new identities (whose principals the role
assignments and federated credentials name), a role assignment Azure refuses as a duplicate, a Key Vault secret
deleted after its replacement wrote it. With the old URN as an alias, Pulumi adopts the resource where it is.
tests/infra/test_moved.py checks every URN the stacks held before against the program's resources and their aliases.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi


@dataclass(frozen=True)
class Component:
    """A component as stacks/__main__.py declared it, at the top of the stack."""

    type: str
    name: str

    def urn(self) -> pulumi.Output[str]:
        return pulumi.create_urn(self.name, self.type)


# Where resources lived before they moved; the names are the ones in every deployed stack's state.
CLUSTER = Component("ggufstack:infra:Cluster", "cluster")
VAULT = Component("ggufstack:infra:Vault", "vault")
WORKLOAD = Component("ggufstack:infra:Workload", "workload")


def moved_from(component: Component, suffix: str) -> pulumi.Alias:
    """The alias of a resource that `component` declared as `<component name>-<suffix>`, its components' naming."""
    return pulumi.Alias(name=f"{component.name}-{suffix}", parent=component.urn())
