"""MONAI Label's infer answer: a ``multipart/form-data`` body with a ``params`` JSON part and the
label file part (as ``requests_toolbelt``'s MultipartEncoder writes it for MONAI Label), which
its clients parse with ``cgi.FieldStorage`` and save under the part's file name."""

from __future__ import annotations

import json
import uuid


def multipart_body(params: dict, filename: str, content: bytes, media_type: str) -> tuple[bytes, str]:
    """(body, content type) of the answer."""
    boundary = uuid.uuid4().hex
    parts = [
        (f'--{boundary}\r\nContent-Disposition: form-data; name="params"\r\n'
         f"Content-Type: application/json\r\n\r\n{json.dumps(params)}\r\n").encode(),
        (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{filename}"\r\n'
         f"Content-Type: {media_type}\r\n\r\n").encode(),
        content,
        f"\r\n--{boundary}--\r\n".encode(),
    ]
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def media_type_of(extension: str) -> str:
    return "application/gzip" if extension.endswith(".gz") else "application/octet-stream"
