"""GET /inference/test-connection (/healthz is in app.py: it needs no key)."""

from fastapi import APIRouter

router = APIRouter(tags=["connection"])


@router.get("/inference/test-connection")
def test_connection() -> dict:
    return {"message": "Success"}
