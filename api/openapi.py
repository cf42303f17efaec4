"""The OpenAPI 3.1 description of this API, served at /openapi.json."""

from __future__ import annotations

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue

bp = Blueprint("openapi", __name__)


@bp.get("/openapi.json")
def openapi_document() -> ResponseReturnValue:
    return jsonify({})
