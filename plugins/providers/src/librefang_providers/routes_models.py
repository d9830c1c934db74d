"""HTTP routes of the model catalog: ``/api/models*`` and ``/api/catalog/*`` (thin: logic in service.py)."""

from __future__ import annotations

import re

from librefang import Router, current_kernel
from librefang.errors import BadRequest

from librefang_providers.catalog import ALIAS, valid_model_id
from librefang_providers.schemas import (
    AliasCreate,
    AliasCreated,
    AliasList,
    CatalogStatus,
    CatalogUpdateRequest,
    CatalogUpdateResult,
    CustomModelAdded,
    CustomModelCreate,
    ModelInfo,
    ModelList,
    ModelsQuery,
    StatusOnly,
)
from librefang_providers.service import catalog_service

_ALIAS_RE = re.compile(ALIAS)


def _checked_model_id(model_id: str) -> str:
    if not valid_model_id(model_id):
        raise BadRequest("invalid model id: 1-200 of A-Z a-z 0-9 . _ : / @ + - (no '..')", code="invalid_model_id")
    return model_id


def models_router() -> Router:
    """Routes of the model catalog."""
    router = Router("provider_models", tags=("models",))

    @router.get("/api/models", query=ModelsQuery, response=ModelList)
    async def list_models(query: ModelsQuery) -> ModelList:
        """The model catalog, filtered by provider, tier and availability."""
        data = await catalog_service(current_kernel()).list_models(query.provider, query.tier, query.available)
        return ModelList.model_validate(data)

    @router.get("/api/models/aliases", response=AliasList)
    async def list_aliases() -> AliasList:
        """Every alias and the model it names (bundled and user-defined)."""
        return AliasList.model_validate(await catalog_service(current_kernel()).list_aliases())

    @router.post("/api/models/aliases", body=AliasCreate, response=AliasCreated, status=201)
    async def create_alias(body: AliasCreate) -> AliasCreated:
        """Create an alias (persisted in aliases.toml)."""
        result = await catalog_service(current_kernel()).add_alias(body.alias, body.model_id)
        return AliasCreated.model_validate(result)

    @router.delete("/api/models/aliases/<alias>", response=StatusOnly)
    async def delete_alias(alias: str) -> StatusOnly:
        """Delete an alias (a bundled one stays deleted across restarts)."""
        if not _ALIAS_RE.match(alias.lower()):
            raise BadRequest(f"invalid alias: must match {ALIAS}", code="invalid_alias")
        return StatusOnly.model_validate(await catalog_service(current_kernel()).delete_alias(alias))

    @router.post("/api/models/custom", body=CustomModelCreate, response=CustomModelAdded, status=201)
    async def add_custom_model(body: CustomModelCreate) -> CustomModelAdded:
        """Add a custom model (persisted in custom_models.json; wins over a bundled model of that id)."""
        return CustomModelAdded.model_validate(await catalog_service(current_kernel()).add_custom_model(body))

    @router.delete("/api/models/custom/<path:model_id>", response=StatusOnly)
    async def remove_custom_model(model_id: str) -> StatusOnly:
        """Remove a custom model (``id`` or ``provider/id``)."""
        model_id = _checked_model_id(model_id)
        return StatusOnly.model_validate(await catalog_service(current_kernel()).delete_custom_model(model_id))

    @router.get("/api/models/<path:model_id>", response=ModelInfo)
    async def get_model(model_id: str) -> ModelInfo:
        """One model by id, alias, or ``provider/model`` (ids may contain ``/``)."""
        model_id = _checked_model_id(model_id)
        return ModelInfo.model_validate(await catalog_service(current_kernel()).get_model(model_id))

    @router.get("/api/catalog/status", response=CatalogStatus)
    async def catalog_status() -> CatalogStatus:
        """Catalog version, last sync, layer counts and skipped-entry errors."""
        return CatalogStatus.model_validate(await catalog_service(current_kernel()).status())

    @router.post("/api/catalog/update", body=CatalogUpdateRequest, response=CatalogUpdateResult)
    async def catalog_update(body: CatalogUpdateRequest) -> CatalogUpdateResult:
        """Reload the catalog from ``<home>/registry``; with ``url``, first fetch a bundle (SSRF rules)."""
        result = await catalog_service(current_kernel()).update(body.url)
        return CatalogUpdateResult.model_validate(result)

    return router
