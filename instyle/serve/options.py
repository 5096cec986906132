"""The stylize request's controls, the CLI's (`instyle stylize --style/--mix/--strength/...`) as query or form
fields, checked into what the batcher needs; a bad value is BadUpload(400) with one line."""
from __future__ import annotations

from dataclasses import dataclass

from instyle.serve.uploads import BadUpload
from instyle.specs import CONTROL_RANGES

FIELDS = ("style", "mix", "strength", "preserve_color", "style_scale", "max_side", "format", "quality")
_TRUE, _FALSE = {"1", "true", "on", "yes"}, {"0", "false", "off", "no", ""}


@dataclass(frozen=True)
class Controls:
    weights: object  # a length-S tensor for a multi-style model, else None
    strength: float
    preserve_color: bool
    style_scale: float
    max_side: int | None
    format: str | None  # None: the upload's own format
    quality: int


def style_names(stylizer) -> list[str]:
    """The names the API lists and accepts: the model's, or "style" for the one style of an unnamed model."""
    return list(stylizer.style_names) or ["style"]


def _number(fields, name, kind, default, low, high):
    text = fields.get(name)
    if text is None or text == "":
        return default
    try:
        value = kind(text)
    except ValueError:
        raise BadUpload(400, f"{name}: expected a number, got {text!r}") from None
    if not low <= value <= high:
        raise BadUpload(400, f"{name} must be between {low} and {high}, got {text}")
    return value


def _control(fields, name, default):
    """A style control (strength, style_scale), in the range the library and the CLI check (specs)."""
    return _number(fields, name, float, default, *CONTROL_RANGES[name])


def parse(fields: dict[str, str], stylizer, also: tuple[str, ...] = ()) -> Controls:
    """Controls from the request's fields, against the loaded model's styles (unknown ones: 400 listing them);
    the fields in `also` are known, and left to their own parser (/v1/stylize's regions)."""
    from instyle.io import ImageError, format_for
    from instyle.models.styles import StyleError, mix_weights

    unknown = sorted(set(fields) - set(FIELDS + also))
    if unknown:
        raise BadUpload(400, f"unknown field {unknown[0]!r} (known: {', '.join(FIELDS + also)})")
    style, mix = fields.get("style") or None, fields.get("mix") or None
    if style and mix:
        raise BadUpload(400, "give style or mix, not both")
    picked = _parse_mix(mix) if mix else style
    names = style_names(stylizer)
    try:
        if stylizer.source is not None:  # a multi-style model: every request its own mix
            weights = mix_weights(names, picked if picked is not None else stylizer.mix)
            if not (bool(weights.isfinite().all()) and float(weights.sum()) > 0):  # a sum past float32 -> 0/0
                raise StyleError(f"mix {mix!r}: the weights' sum overflows; weights are relative, use smaller "
                                 "ones (candy=1,mosaic=1 is the same mix as candy=3e38,mosaic=3e38)")
        else:
            weights = None
            own = {"0", names[0]}
            chosen = list(picked) if isinstance(picked, dict) else [] if picked is None else [picked]
            if any(str(p) not in own for p in chosen):
                raise StyleError(f"unknown style {chosen[0]!r} (known: {names[0]})")
    except StyleError as e:
        raise BadUpload(400, str(e)) from None
    preserve = fields.get("preserve_color", "").strip().lower()
    if preserve not in _TRUE | _FALSE:
        raise BadUpload(400, f"preserve_color: expected true or false, got {fields['preserve_color']!r}")
    fmt = (fields.get("format") or "").lower().lstrip(".") or None
    if fmt:
        try:
            format_for("x." + fmt)
        except ImageError as e:
            raise BadUpload(400, "format: " + str(e).removeprefix("x." + fmt + ": ")) from None
    return Controls(weights, _control(fields, "strength", stylizer.strength), preserve in _TRUE,
                    _control(fields, "style_scale", stylizer.style_scale),
                    _number(fields, "max_side", int, None, 1, 1 << 16), fmt,
                    _number(fields, "quality", int, 95, 1, 100))


def _parse_mix(text: str) -> dict[str, float]:
    from instyle.errors import UsageError
    from instyle.stylize_cli import parse_mix

    try:
        return parse_mix(text)
    except UsageError as e:
        raise BadUpload(400, str(e).replace("--mix", "mix")) from None
