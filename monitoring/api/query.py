"""Unknown query parameters are a 400 naming them: a filter misspelt (``?state=``) must
never answer the unfiltered list as if it had been applied. Checked after authentication,
before the parameters are validated.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from ninja import NinjaAPI
from ninja.operation import Operation

from monitoring.api.errors import ApiError


def _guard(operation: Operation) -> None:
    allowed: list[str] = []  # what the operation declares, in its order
    for model in operation.models:
        if getattr(model, "__ninja_param_source__", None) == "query":
            allowed.extend(getattr(model, "__ninja_flatten_map__", None) or model.model_fields)
    resolve = operation._get_values  # django-ninja's step that validates parameters

    def checked(request: HttpRequest, path_params: Any, temporal_response: Any) -> Any:
        unknown = [name for name in request.GET if name not in allowed]
        if unknown:
            takes = ", ".join(allowed) if allowed else "no query parameters"
            plural = "s" if len(unknown) > 1 else ""
            raise ApiError(
                400,
                "unknown_parameters",
                f"Unknown query parameter{plural}: {', '.join(unknown)}. "
                f"This operation takes: {takes}.",
                fields={f"query.{name}": "unknown parameter" for name in unknown},
            )
        return resolve(request, path_params, temporal_response)

    operation._get_values = checked  # type: ignore[method-assign]


def forbid_unknown_parameters(api: NinjaAPI) -> None:
    """Call once, after the last route is added."""
    for bound in api._get_bound_routers():
        for path_view in bound.path_operations.values():
            for operation in path_view.operations:
                _guard(operation)
