"""Code preparation: how a sandbox of a function version comes to be on this node.

A version's code is unpacked and its requirements installed once (then cached), its environment is what
Lambda sets plus the function's own variables, and its sandbox is a jail started ahead of time when one is
ready (see prestart), else a new one, handed the function and run through the handler's init.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..config import Config
from ..functions import deps
from ..functions.catalog import Catalog, Version
from ..functions.package import Package, unpack
from ..jail import Isolation, View
from .prestart import Prestarted, Shape
from .process import BOOTSTRAP, InitFailed, SandboxProcess, bootstrap_argv

log = logging.getLogger(__name__)

XRAY_DAEMON = "169.254.79.129:2000"     # Lambda's AWS_XRAY_DAEMON_ADDRESS


class Launcher:
    def __init__(self, config: Config, *, catalog: Catalog) -> None:
        self._config = config
        self._catalog = catalog
        self.isolation = Isolation.open(config)
        self._argv = bootstrap_argv(self.isolation.bootstrap_path or str(BOOTSTRAP))
        self._prestarted = (Prestarted(self._start_blank, per_shape=config.sandbox.prestarted)
                            if self.isolation.starts_ahead and config.sandbox.prestarted > 0 else None)

    def start(self) -> None:
        if self._prestarted is not None:
            self._prestarted.begin()

    async def stop(self) -> None:
        if self._prestarted is not None:
            await self._prestarted.stop()

    async def spawn(self, version: Version, *, cpus: set[int] | None = None) -> SandboxProcess:
        """A sandbox of `version` on `cpus` (None: wherever), its init done; raises InitFailed."""
        task_root, extra_path = await self.prepare(version)
        return await self._start(version, task_root, extra_path, cpus=cpus)

    async def prepare(self, version: Version) -> tuple[Path, list[str]]:
        """A version's code and dependency folder on this node: unpacked and installed once, then cached."""
        task_root = await self._catalog.code_path(version)
        return task_root, await asyncio.to_thread(self._dependencies, task_root)

    async def prefetch(self, name: str) -> None:
        """Another node deployed: unpack the code and install its dependencies now, not on first invocation."""
        latest = self._catalog.latest(name)
        if latest is None:
            return
        try:
            await self.prepare(latest)
        except Exception:   # the first invocation will try again and report the error to its caller
            log.warning("could not prepare a new version", extra={"function": name, "revision": latest.revision},
                        exc_info=True)

    async def trial_init(self, name: str, package: Package) -> dict[str, Any] | None:
        """Unpack, install and import a package in a throw-away sandbox before it becomes a version:
        None when the handler imports, else Lambda's init error (with the init logs). Raises DepsError."""
        folder = self._config.data_dir / "code" / package.code_hash
        task_root = await asyncio.to_thread(unpack, package.zip_bytes, folder)
        extra_path = await asyncio.to_thread(self._dependencies, task_root)
        trial = Version(function=name, number=0, code_hash=package.code_hash, spec=package.spec, created="")
        try:
            sandbox = await self._start(trial, task_root, extra_path)
        except InitFailed as failure:
            return {**failure.error, "logs": failure.logs}
        await sandbox.kill()
        return None

    def sandbox_env(self, version: Version) -> dict[str, str]:
        """Only what Lambda sets plus the function's own variables: never the server's environment.
        (LAMBDA_TASK_ROOT is added where the code is known: see SandboxProcess.init.)"""
        spec = version.spec
        label = version.label
        today = datetime.now(timezone.utc).strftime("%Y/%m/%d")
        env = {
            **self.isolation.base_env(),
            "_HANDLER": spec.handler, "AWS_REGION": self._config.region,
            "AWS_DEFAULT_REGION": self._config.region, "AWS_EXECUTION_ENV": "AWS_Lambda_python3.11",
            "AWS_LAMBDA_FUNCTION_NAME": version.function, "AWS_LAMBDA_FUNCTION_VERSION": label,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(spec.memory_mb),
            "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{version.function}",
            "AWS_LAMBDA_LOG_STREAM_NAME": f"{today}/[{label}]{uuid.uuid4().hex}",
            # As Lambda (a function may set its own): where an X-Ray daemon would listen, and that tracing
            # code logs, rather than raises, when it finds no trace.
            "AWS_XRAY_DAEMON_ADDRESS": XRAY_DAEMON, "_AWS_XRAY_DAEMON_ADDRESS": XRAY_DAEMON.split(":")[0],
            "_AWS_XRAY_DAEMON_PORT": XRAY_DAEMON.split(":")[1], "AWS_XRAY_CONTEXT_MISSING": "LOG_ERROR",
            "AWS_LAMBDA_LOG_FORMAT": spec.logging.format,
        }
        if spec.logging.is_json:
            env["AWS_LAMBDA_LOG_LEVEL"] = spec.logging.application_log_level or "INFO"
        env.update(spec.environment)
        return env

    async def _start(self, version: Version, task_root: Path, extra_path: list[str], *,
                     cpus: set[int] | None = None) -> SandboxProcess:
        """A sandbox of `version`, its init done: a jail started ahead of time when one is ready, else a new one."""
        spec = version.spec
        env = self.sandbox_env(version)
        deps = Path(extra_path[0]) if extra_path else None
        shape: Shape = (spec.network != "none", spec.ephemeral_storage_mb)
        sandbox = self._prestarted.take(shape) if self._prestarted is not None else None
        try:
            if sandbox is None:
                view = View(task_root=None if self.isolation.starts_ahead else task_root, deps=deps,
                            ephemeral_mb=spec.ephemeral_storage_mb, network=shape[0])
                sandbox = await SandboxProcess.start(self.isolation.launch(view, argv=self._argv, env=env,
                                                                           memory_mb=spec.memory_mb))
            await sandbox.init(handler=spec.handler, memory_mb=spec.memory_mb, env=env, task_root=task_root,
                               deps=deps, cpus=cpus)
        finally:
            if self._prestarted is not None:
                self._prestarted.replace(shape)     # after the cold start, not during it (prestart.py)
        return sandbox

    async def _start_blank(self, shape: Shape) -> SandboxProcess:
        """A jail that knows no function yet (see prestart)."""
        view = View(task_root=None, deps=None, network=shape[0], ephemeral_mb=shape[1])
        launch = self.isolation.launch(view, argv=self._argv, env=self.isolation.base_env(), memory_mb=128)
        return await SandboxProcess.start(launch)

    def _dependencies(self, task_root: Path) -> list[str]:
        requirements = task_root / "requirements.txt"
        if not requirements.is_file():
            return []
        python = self._config.sandbox.python or os.path.realpath(sys.executable)
        # One cache per interpreter: packages built for one Python are not reused by another.
        deps_dir = self._config.data_dir / "deps" / hashlib.sha256(python.encode()).hexdigest()[:12]
        folder = deps.install(requirements.read_bytes(), deps_dir=deps_dir, python=python,
                              timeout_s=self._config.deploy.install_timeout_s)
        return [str(folder)] if folder is not None else []
