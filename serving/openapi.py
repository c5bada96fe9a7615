"""Request-body schemas for the OpenAPI document (the handlers read raw bodies, so FastAPI cannot infer them).

The pydantic schema is inlined (no `$ref`s: BentoML merges only paths from a mounted app's document) and
written in OpenAPI 3.0's dialect, the version of BentoML's document: `nullable` instead of a null type,
boolean `exclusiveMinimum`/`exclusiveMaximum`, `enum` instead of `const`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_inline(v, defs) for v in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/") and ref.removeprefix("#/$defs/") in defs:
        return _inline(defs[ref.removeprefix("#/$defs/")], defs)
    out = {k: _inline(v, defs) for k, v in node.items() if k != "$defs"}
    for bound, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(out.get(bound), int | float) and not isinstance(out[bound], bool):
            out[plain], out[bound] = out[bound], True
    if "const" in out:
        out["enum"] = [out.pop("const")]
    options = out.get("anyOf")
    if isinstance(options, list) and {"type": "null"} in options:
        rest = [o for o in options if o != {"type": "null"}]
        out.pop("anyOf")
        out["nullable"] = True
        if len(rest) == 1:
            out.update(rest[0])
        else:
            out["anyOf"] = rest
    return out


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` for a route whose JSON body is `model`."""
    schema = model.model_json_schema()
    inlined = _inline(schema, schema.get("$defs", {}))
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": inlined}}}}


def openapi30(schema: dict[str, Any], cls: Any = None) -> None:
    """`json_schema_extra` hook: rewrite a model's own schema in OpenAPI 3.0's dialect, in place (the
    schemas BentoML publishes for the typed `@bentoml.api` methods; nested models keep their `$ref`)."""
    fixed = _inline(schema, {})
    schema.clear()
    schema.update(fixed)
