"""The security context every pod and container of the stack runs with: Kubernetes' "restricted" Pod Security
Standard (non-root, no privilege escalation, all capabilities dropped, the runtime's default seccomp profile) and a
read-only root filesystem. One place, so a new workload cannot start with less.

https://kubernetes.io/docs/concepts/security/pod-security-standards/#restricted
"""

from __future__ import annotations

from pulumi_kubernetes import core


def runtime_default_seccomp() -> core.v1.SeccompProfileArgs:
    return core.v1.SeccompProfileArgs(type="RuntimeDefault")


def locked_down_container(*, run_as_uid: int | None = None) -> core.v1.SecurityContextArgs:
    """A container that cannot escalate, holds no capability and writes only to its volumes; `run_as_uid`: also
    pinned to that user and group at the container level."""
    user = (
        {} if run_as_uid is None else {"run_as_non_root": True, "run_as_user": run_as_uid, "run_as_group": run_as_uid}
    )
    return core.v1.SecurityContextArgs(
        **user,
        allow_privilege_escalation=False,
        privileged=False,
        read_only_root_filesystem=True,
        capabilities=core.v1.CapabilitiesArgs(drop=["ALL"]),
        seccomp_profile=runtime_default_seccomp(),
    )


def non_root_pod(uid: int, *, fs_group: bool = False) -> core.v1.PodSecurityContextArgs:
    """A pod whose containers run as `uid` (and its group); `fs_group`: its volumes are writable by that group."""
    return core.v1.PodSecurityContextArgs(
        run_as_non_root=True,
        run_as_user=uid,
        run_as_group=uid,
        fs_group=uid if fs_group else None,
        seccomp_profile=runtime_default_seccomp(),
    )
