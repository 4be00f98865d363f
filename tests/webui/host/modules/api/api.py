"""Stand-in for modules.api.api: imports process_images by name, as the WebUI does; text2imgapi/img2imgapi set
p up as the API does (is_api, nothing saved and no grid unless save_images) and answer its response; call()
is the API middleware's exception handling (handle_exception of v1.10.1)."""

import base64
import io
import json

from fastapi.exceptions import HTTPException

from modules import errors
from modules.processing import process_images


def _encode(image):
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def text2imgapi(p, save_images=False, send_images=True):
    p.is_api = True
    p.do_not_save_samples = p.do_not_save_grid = not save_images
    processed = process_images(p)
    return {"images": [_encode(i) for i in processed.images] if send_images else [], "info": processed.js()}


img2imgapi = text2imgapi


def call(route, *args, **kwargs):
    """(status, JSON body) as a client sees them; a traceback is printed for anything but an HTTPException."""
    try:
        return 200, route(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - as the host does
        err = {"error": type(e).__name__, "detail": vars(e).get('detail', ''), "body": vars(e).get('body', ''),
               "errors": str(e)}
        if not isinstance(e, HTTPException):
            errors.report(f"API error: POST: /sdapi/v1/txt2img {err}", exc_info=True)
        return vars(e).get('status_code', 500), json.loads(json.dumps(err))
