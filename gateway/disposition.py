"""Content-Disposition (RFC 6266) with an ASCII fallback and `filename*` for the rest."""

from urllib.parse import quote

_FALLBACK_UNSAFE = str.maketrans({'"': "_", "\\": "_", ";": "_", "%": "_"})


def content_disposition(filename: str, *, inline: bool = False) -> str:
    kind = "inline" if inline else "attachment"
    fallback = filename.encode("ascii", "replace").decode("ascii").replace("?", "_")
    fallback = fallback.translate(_FALLBACK_UNSAFE)
    value = f'{kind}; filename="{fallback}"'
    if fallback != filename:
        value += f"; filename*=UTF-8''{quote(filename, safe='')}"
    return value
