"""The REST API's decoding fields, generated from the one declaration (:mod:`captioning.decoding.options`): the form
fields ``POST /v1/captions`` reads, with the types, ranges, enum and help that ``/openapi.json`` publishes, and a
one-line 422 for any of them FastAPI refuses (``top_p must be in (0, 1] (1 = off), got 2.0``).
"""
from __future__ import annotations

import inspect
from typing import Annotated, Literal

import annotated_types as at
from fastapi import Form, HTTPException, Request
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.responses import JSONResponse

from captioning.decoding.options import STRATEGIES, STRATEGY_HELP, USER_OPTIONS, Option, resolve

BY_FIELD = {o.field: o for o in USER_OPTIONS}
WORDS = {int: "a whole number", float: "a number", bool: "true or false", tuple: "words separated by spaces"}


def _annotation(option: Option):
    """The field's type with its limits (what FastAPI validates and the OpenAPI schema shows); None: not given."""
    if option.kind is bool:
        return bool | None
    if option.kind is tuple:
        return str | None                     # words separated by spaces, e.g. "man woman"
    limits = []
    if option.floor is not None or (option.low is not None and not option.low_open):
        limits.append(at.Ge(option.lowest))
    elif option.low is not None:
        limits.append(at.Gt(option.low))
    if option.highest is not None:
        limits.append(at.Le(option.highest))
    return (Annotated[option.kind, *limits] if limits else option.kind) | None


def _description(option: Option) -> str:
    scope = "" if option.strategies == STRATEGIES else f"{', '.join(option.strategies)} only: "
    limits = f"; {option.limits()}" if option.kind in (int, float) else ""
    return f"{scope}{option.help}{limits}"


def decoding_form(max_length: int | None = None):
    """A FastAPI dependency: the decoding form fields -> DecodeConfig fields (422 in one line naming the field: a
    value out of range, an empty field, or an option the chosen strategy does not use). ``max_length`` is the
    bundle's, for checking ``min_length``."""
    params = [inspect.Parameter("request", inspect.Parameter.KEYWORD_ONLY, annotation=Request),
              inspect.Parameter("strategy", inspect.Parameter.KEYWORD_ONLY, default=None,
                                annotation=Annotated[Literal[STRATEGIES] | None,
                                                     Form(description=f"default beam; {STRATEGY_HELP}")])]
    params += [inspect.Parameter(o.field, inspect.Parameter.KEYWORD_ONLY, default=None,
                                 annotation=Annotated[_annotation(o), Form(description=_description(o))])
               for o in USER_OPTIONS]

    async def decoding(request: Request, **values) -> dict:
        form = await request.form()              # parsed once per request: FastAPI's own copy
        for field in ("strategy", *BY_FIELD):    # FastAPI reads an empty field as "not given": say so instead
            if form.get(field) == "":
                raise HTTPException(422, f"{field} is empty: give a value or leave the field out")
        given = {"strategy": values["strategy"]} if values["strategy"] is not None else {}
        for field, option in BY_FIELD.items():
            if values[field] is not None:
                given[option.name] = tuple(values[field].split()) if option.kind is tuple else values[field]
        try:
            return resolve(given, "api", max_length)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None

    decoding.__signature__ = inspect.Signature(params)
    return decoding


def field_problem(field: str, raw) -> str | None:
    """The one-line reason a decoding field's raw form value is refused, or None for a field not declared here."""
    if field == "strategy":
        return f"strategy must be one of {', '.join(STRATEGIES)}, got {raw!r}"
    option = BY_FIELD.get(field)
    if option is None:
        return None
    try:
        value = option.kind(raw) if option.kind in (int, float) else raw
    except (TypeError, ValueError):
        return f"{field} must be {WORDS[option.kind]}, got {raw!r}"
    return option.problem(value, field) or f"{field} must be {WORDS[option.kind]}, got {raw!r}"


async def one_line_422(request: Request, exc):
    """FastAPI's validation error for a decoding field, as one line naming the field; others as FastAPI has them."""
    for error in exc.errors():
        message = field_problem(str(error["loc"][-1]), error.get("input")) if error.get("loc") else None
        if message:
            return JSONResponse({"detail": message}, status_code=422)
    return await request_validation_exception_handler(request, exc)
