"""Request bodies in, encoded images out, with the CLI's own code: the upload is spooled to a temporary file and
read by instyle.jobs (header first: the pixel limit holds before any decoding; then instyle.io's decoder with
EXIF, ICC, alpha and 16-bit input); results are encoded by instyle.io.write_image, as `instyle stylize` writes
them, so the bytes a client gets are the CLI's for the same settings.
"""
from __future__ import annotations

import asyncio
import tempfile
from dataclasses import dataclass
from pathlib import Path

from instyle.serve.refusals import Refused


class BadUpload(Refused):
    """A request the server refuses for what it sent; `status` is the HTTP status, the message one line."""

    def __init__(self, status: int, message: str):
        super().__init__(status, message)


async def read_body(request, limit: int, *, holding, timeout_s: float) -> bytes:
    """The request body, refused (413) as soon as it passes `limit` bytes: a declared Content-Length is checked
    before reading, a chunked body while it streams. Its bytes are held in `holding` (503 past the server's
    bound); a body not received within `timeout_s` of its headers is 408, a client gone mid-body 499."""
    from starlette.requests import ClientDisconnect

    declared = request.headers.get("content-length")
    if declared and declared.isdigit():
        if int(declared) > limit:
            raise BadUpload(413, f"upload of {int(declared)} bytes is over the limit of {limit} bytes "
                            "(--max-upload-mb)")
        holding.grow_to(int(declared))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    stream = request.stream()
    chunks, size = [], 0
    try:
        while True:
            try:
                chunk = await asyncio.wait_for(_next(stream), max(deadline - loop.time(), 0))
            except StopAsyncIteration:
                break
            size += len(chunk)
            if size > limit:
                raise BadUpload(413, f"upload is over the limit of {limit} bytes (--max-upload-mb)")
            holding.grow_to(size)
            chunks.append(chunk)
    except asyncio.TimeoutError:
        raise BadUpload(408, f"upload not received within {timeout_s:g} s (--body-timeout-s)") from None
    except ClientDisconnect:
        raise BadUpload(499, "the client went away before its upload ended") from None
    finally:
        await stream.aclose()
    return b"".join(chunks)


async def _next(stream):
    return await stream.__anext__()


async def split_multipart(request, body: bytes, max_fields: int, named_files: tuple[str, ...] = ()):
    """(image bytes, image name, text fields, {name: (bytes, file name)} of the file fields in `named_files`) of a
    multipart/form-data body already read by read_body: one image file (the file field not in `named_files`),
    each named file at most once, at most `max_fields` text fields, else a 400 (the framework's past its limits)."""
    from starlette.requests import Request

    async def replay():
        return {"type": "http.request", "body": body, "more_body": False}

    form = await Request(request.scope, replay).form(max_files=1 + len(named_files), max_fields=max_fields)
    try:
        images, named = [], {}
        for key, value in form.multi_items():
            if isinstance(value, str):
                continue
            if key not in named_files:
                images.append(value)
            elif key in named:
                raise BadUpload(400, f"{key}: sent twice; send one file")
            else:
                named[key] = (await value.read(), value.filename or key)
        if len(images) != 1:
            raise BadUpload(400, f"multipart body: expected one image file field, got {len(images)}")
        text = {k: v for k, v in form.multi_items() if isinstance(v, str)}
        return await images[0].read(), images[0].filename or "upload", text, named
    finally:
        await form.close()


@dataclass
class Decoded:
    picture: object  # instyle.io.Picture, resized to the size to stylize at
    name: str
    warnings: list[str]


def decode(data: bytes, name: str, *, max_pixels: int, max_side: int | None) -> Decoded:
    """Decode one upload with the CLI's per-file rules; BadUpload(400 | 413) naming the upload otherwise."""
    from instyle import io, jobs

    if not data:
        raise BadUpload(400, f"{name}: empty upload")
    suffix = Path(name).suffix.lower()
    with tempfile.TemporaryDirectory(prefix="instyle-serve-") as folder:
        src = Path(folder) / ("upload" + (suffix if suffix in io.IMAGE_EXTENSIONS else ""))
        src.write_bytes(data)

        def named(line: str) -> str:
            return line.removeprefix("error: ").replace(str(src), name)

        try:
            w, h = io.image_size(src)
        except io.ImageError as e:
            raise BadUpload(400, named(str(e))) from None
        if w * h > max_pixels:  # from the header alone: nothing is decoded
            raise BadUpload(413, f"{name}: {w}x{h} = {w * h} pixels is over the limit of {max_pixels} (--max-pixels)")
        job = jobs.Job(src, src, jobs.target_size((w, h), max_side, None))
        picture = jobs.read_job(job, jobs.ImageOptions(max_side=max_side, max_pixels=max_pixels))
        lines = [named(line) for line in job.lines]
        if picture is None:
            raise BadUpload(400, next((line for line in lines if not line.startswith("warning: ")), f"{name}: "
                                      "cannot read"))
        return Decoded(picture, name, [line.removeprefix("warning: ") for line in lines])


def encode(picture, y, fmt: str, *, quality: int) -> bytes:
    """The stylized tensor `y` (3,H,W) with `picture`'s alpha and ICC profile, encoded as the CLI writes it."""
    from instyle import io

    with tempfile.TemporaryDirectory(prefix="instyle-serve-") as folder:
        path = io.write_image(Path(folder) / f"out.{fmt}", io.Picture(io.rgb_from_tensor(y), picture.alpha,
                                                                     picture.icc_profile), quality=quality)
        return path.read_bytes()


MEDIA_TYPES = {"jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp",
               "bmp": "image/bmp", "tif": "image/tiff", "tiff": "image/tiff", "gif": "image/gif",
               "ppm": "image/x-portable-pixmap", "pgm": "image/x-portable-graymap",
               "pnm": "image/x-portable-anymap", "tga": "image/x-tga"}
