"""The body of ``POST /v1/jobs``: which request model reads it, and how the OpenAPI document shows it.

The body's ``kind`` picks the model (:data:`REQUEST_MODELS`): none or ``"detect"`` is a
:class:`~changeclip.server.schemas.DetectRequest` (so a version-1 detection body is unchanged),
``"dataset"`` a :class:`~changeclip.server.schemas.DatasetRequest`, ``"train"`` a
:class:`~changeclip.server.schemas.TrainRequest`. Validation errors are answered exactly like
FastAPI's own (422, ``loc`` = ``["body", field, ...]``), without the model's name in ``loc``.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ValidationError
from pydantic.json_schema import models_json_schema

from changeclip import protocol
from changeclip.server.schemas import DatasetRequest, DetectRequest, TrainRequest

REQUEST_MODELS: dict[str, type[BaseModel]] = {"detect": DetectRequest, "dataset": DatasetRequest,
                                              "train": TrainRequest}
"""The request model of each job kind."""

_REF = "#/components/schemas/{model}"

JOB_REQUEST_OPENAPI: dict[str, Any] = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": {"oneOf": [{"$ref": _REF.format(model=m.__name__)} for m in REQUEST_MODELS.values()],
               "description": "a detection (no 'kind', or kind 'detect'), a dataset (kind 'dataset') or a "
                              "training (kind 'train')"}}}}}
"""The ``openapi_extra`` of the submit route: the body is one of the three request models."""


def read_job_request(body: dict[str, Any]) -> Any:
    """Validate a job body with the model its ``kind`` names.

    Raises:
        RequestValidationError: an unknown ``kind`` or a body its model refuses (HTTP 422).
    """
    kind = body.get("kind", "detect")
    model = REQUEST_MODELS.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise RequestValidationError([{"loc": ("body", "kind"), "msg": f"kind must be one of "
                                       f"{', '.join(protocol.JOB_KINDS)} (none: detect)", "type": "job_kind",
                                       "input": kind}])
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        errors = []
        for error in exc.errors(include_url=False):
            error = dict(error)
            error["loc"] = ("body", *error.get("loc", ()))
            error.pop("ctx", None)
            errors.append(error)
        raise RequestValidationError(errors) from None


def install_job_request_schemas(app: FastAPI) -> None:
    """Make ``app.openapi()`` list the three request models under ``components/schemas``
    (the submit route refers to them; FastAPI only lists the models routes declare)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            _, defs = models_json_schema([(m, "validation") for m in REQUEST_MODELS.values()], ref_template=_REF)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for name, definition in defs.get("$defs", {}).items():
                components.setdefault(name, definition)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
