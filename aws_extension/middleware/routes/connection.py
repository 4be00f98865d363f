"""GET /inference/test-connection (/healthz is in app.py: it needs no key)."""

from fastapi import APIRouter

from aws_extension.middleware.answers import ConnectionAnswer

router = APIRouter(tags=["connection"])


@router.get("/inference/test-connection", response_model=ConnectionAnswer)
def test_connection():
    return ConnectionAnswer()
