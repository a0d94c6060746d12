"""Labs checked against real Docker: a dockerd in one of the lab's hosts, for the lab's lifetime.

A lab file that says ``docker: {host: host, containers: [...]}`` gets Debian's dockerd 20.10
started in that host's namespace when the lab starts (``checks.dockerd.DockerDaemon``, with
cnmlab's plugin folder visible to it as ``/run/docker/plugins``), and stopped when the lab
stops. The learner's commands reach it through ``{docker_host}`` (``docker -H {docker_host}``
or ``export DOCKER_HOST={docker_host}``); the step's checks see its containers by name, next to
the lab's own hosts and upstream (``checks.targets.LabDockerTarget``).

The host must be left to Docker: no engine default bridge (Docker makes its own ``docker0``)
and a manual firewall (Docker writes the rules). ``{workdir}`` is a scratch folder per lab
instance for files the learner edits (lab 10's driver); it goes when the lab stops.

Everything is named after the lab instance: the daemon's workdir in ``DAEMONS_DIR`` (which
``cnmlab clean`` sweeps), its cgroup, and the plugin names lab 10 asks for (``{lab}-...``).
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from typing import Any

from cnmlab.checks import dockerd
from cnmlab.checks.targets import LabDockerTarget
from cnmlab.plugin import discovery

WORK_ROOT = "/tmp/cnmlab-work"


@dataclass
class DockerSpec:
    """A lab file's ``docker:`` entry."""

    host: str
    containers: list[str] = field(default_factory=list)


def workdir(instance: str) -> str:
    """The daemon's folder (socket, data, exec roots)."""
    return os.path.join(dockerd.DAEMONS_DIR, instance)


def docker_host(instance: str) -> str:
    """What ``docker -H`` (or ``DOCKER_HOST``) takes to reach the lab's dockerd."""
    return f"unix://{os.path.join(workdir(instance), 'docker.sock')}"


def work_folder(instance: str) -> str:
    return os.path.join(WORK_ROOT, instance)


def start(lab: Any, host: str, instance: str, quiet: bool = True) -> dockerd.DockerDaemon:
    """Start dockerd in the lab's host ``host``; raises FeatureMissing without Docker."""
    dockerd.require_tools("this lab runs real Docker, which is missing here:")
    daemon = dockerd.DockerDaemon(instance, lab.host(host).netns, workdir(instance),
                                  cache_dir=dockerd.IMAGE_CACHE, quiet=quiet,
                                  plugins_dir=discovery.CNMLAB_PLUGINS)
    daemon.start()
    return daemon


def stop(instance: str) -> None:
    """Stop the lab's dockerd (if it has one), forget its scratch folder and the sockets its
    killed plugins left. Safe to call for any lab, running or not."""
    if os.path.exists(os.path.join(workdir(instance), dockerd.STATE_FILE)):
        dockerd.cleanup_workdir(workdir(instance))
    shutil.rmtree(work_folder(instance), ignore_errors=True)


def forget_plugins() -> None:
    """After the lab's namespaces are gone: the plugins that ran in them left sockets."""
    discovery.clean_stale()


def target(lab: Any, spec: DockerSpec, instance: str) -> LabDockerTarget:
    return LabDockerTarget(lab, spec.host, docker_host(instance)[len("unix://"):])
