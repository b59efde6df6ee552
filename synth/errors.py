"""User-facing errors: each says what is wrong (column, value, field) and what to do.

The CLI, the jobs and the endpoint turn a `SynthError` into a one-line message and a non-zero
exit (or an HTTP 422) instead of a stack trace.
"""


class SynthError(Exception):
    """An error the user can act on."""


class DataError(SynthError):
    """The reference data is unusable as given (missing, not Parquet, empty, bad values)."""


class ConfigError(SynthError):
    """A config, override or request names something that does not exist or is out of range."""


class ArtifactError(SynthError):
    """A model artifact is missing, tampered with or written by an incompatible version."""


def format_validation_error(e, source: str, model=None, raw=None) -> str:
    """The one way a pydantic ValidationError reaches a user: "SOURCE is invalid:" and a line per
    bad field with its dotted location and the message. With the validated `model` class, a union's
    tag (model.family) is left out of locations and an unknown field lists the known ones, with a
    close match; a model names its fields with a `field_noun` class attribute ("metric"). With the
    `raw` input, a list item is named by its "name" (columns[2] ('age').max)."""
    import difflib

    lines = [f"{source} is invalid:"]
    for err in e.errors():
        where: list[str] = []
        node, cls, parent, known = raw, model, None, None
        for part in err["loc"]:
            if isinstance(cls, list) and isinstance(part, str):  # a union's tag, not a field the user wrote
                cls = _tagged(cls, part)
                if cls is not None:
                    continue
            if isinstance(part, int):
                item = node[part] if isinstance(node, list) and part < len(node) else None
                name = item.get("name") if isinstance(item, dict) else None
                label = f"[{part}]" + (f" ({name!r})" if name is not None else "")
                where[-1:] = [(where[-1] if where else "") + label]
                node = item
                continue
            fields = getattr(cls, "model_fields", None)
            parent, known = (cls, list(fields)) if fields is not None else (None, None)
            where.append(str(part))
            node = node.get(part) if isinstance(node, dict) else None
            cls = _field_model(fields[part]) if fields is not None and part in fields else None
        loc = ".".join(where) or "(top level)"
        if err["type"] == "extra_forbidden" and known is not None:
            key, noun, inside = where[-1], getattr(parent, "field_noun", "field"), ".".join(where[:-1])
            msg = (f"unknown {noun} {key!r} in {inside}; {inside} takes {', '.join(known)}" if inside
                   else f"unknown {noun} {key!r}; known: {', '.join(known)}")
            close = difflib.get_close_matches(key, known, n=1)
            if close:
                msg += f" (did you mean {close[0]!r}?)"
        else:
            msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def _field_model(field):
    """The model class a field holds (of a list's items too), a list of them for a union, or None."""
    import typing

    from pydantic import BaseModel

    def members(a) -> list:
        if isinstance(a, type) and issubclass(a, BaseModel):
            return [a]
        return [m for x in typing.get_args(a) for m in members(x)]

    found = members(field.annotation)
    return found[0] if len(found) == 1 else (found or None)


def _tagged(union: list, tag):
    """The member of a union whose (Literal) field defaults to `tag`, else None."""
    for m in union:
        if any(f.default == tag for f in m.model_fields.values()):
            return m
    return None


def validated(model, raw, source: str):
    """`model.model_validate(raw)`, or a ConfigError naming every bad field of `source`."""
    from pydantic import ValidationError

    try:
        return model.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source, model, raw)) from None


def with_overrides(raw: dict, overrides: dict) -> dict:
    """`raw` with dotted overrides ({"train.steps": 10}) written in; None values are left out."""
    for dotted, value in overrides.items():
        if value is None:
            continue
        node = raw
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return raw
