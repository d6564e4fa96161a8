"""The one deploy pipeline: a zip is checked, its handler tried in a throw-away sandbox, then it becomes a version.

Its ways in are the functions_dir at the gateway's start (`deploy_folders`), `PUT /functions/{name}/code`
(gateway/deploy.py) and the Lambda API's CreateFunction / UpdateFunctionCode / UpdateFunctionConfiguration
(gateway/lambda_api/changes.py, which writes the catalog with Lambda's version model). Each says a refusal in its
own format: CodeError (the zip, function.yaml), DepsError (requirements.txt), InitFailed (the handler's import).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Protocol

from ..config import Config
from ..functions.catalog import Catalog, DeployResult
from ..functions.deps import DepsError
from ..functions.package import CodeError, Limits, Package, check_zip
from ..functions.spec import FunctionSpec

log = logging.getLogger(__name__)


class InitFailed(Exception):
    """The handler does not import with this code and configuration; `error` is Lambda's init error
    (errorType, errorMessage, and the init logs)."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(f"the handler does not import: {error['errorType']}: {error['errorMessage']}")
        self.error = error


class Trial(Protocol):
    """What the pipeline needs of the executor: one throw-away sandbox per tried package."""

    async def trial_init(self, name: str, package: Package) -> dict[str, Any] | None:
        """None when the handler imports, else Lambda's init error. Raises CodeError or DepsError."""


def limits(config: Config) -> Limits:
    """The size limits of a deployed zip (deploy.zipped_limit_bytes, deploy.unzipped_limit_bytes)."""
    return Limits(zipped_bytes=config.deploy.zipped_limit_bytes, unzipped_bytes=config.deploy.unzipped_limit_bytes)


async def checked(config: Config, zip_bytes: bytes, *,
                  configure: Callable[[FunctionSpec], FunctionSpec] | None = None) -> Package:
    """The zip as a package, within the limits, with its function.yaml (or what `configure` makes of it). Raises
    CodeError."""
    return await asyncio.to_thread(check_zip, zip_bytes, limits=limits(config), configure=configure)


async def trial(executor: Trial, name: str, package: Package) -> None:
    """Unpack, install and import the package in a throw-away sandbox, so that no version is stored that could
    not start. Raises CodeError, DepsError or InitFailed."""
    init_error = await executor.trial_init(name, package)
    if init_error is not None:
        raise InitFailed(init_error)


async def deploy(catalog: Catalog, executor: Trial, name: str, package: Package) -> DeployResult:
    """The tried package as $LATEST, published (unless the newest version has its content already)."""
    await trial(executor, name, package)
    return await catalog.deploy(name, package)


async def deploy_folders(config: Config, catalog: Catalog, executor: Trial) -> None:
    """Deploy the folders of functions_dir whose content changed, checked as a remote deploy is; a folder that
    is refused is logged and left out."""
    for name, package in await catalog.changed_folders(config.functions_dir):
        try:
            await deploy(catalog, executor, name, package)
        except (CodeError, DepsError, InitFailed) as exc:
            log.error("not deployed: %s", exc, extra={"function": name})
