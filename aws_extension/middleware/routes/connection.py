"""GET /inference/test-connection (/healthz is in app.py: it needs no key): also who the key is."""

from fastapi import APIRouter, Depends

from aws_extension.middleware.answers import ConnectionAnswer
from aws_extension.middleware.principals import Principal, current_principal

router = APIRouter(tags=["connection"])


@router.get("/inference/test-connection", response_model=ConnectionAnswer)
def test_connection(principal: Principal = Depends(current_principal)):
    return ConnectionAnswer(username=principal.username, roles=list(principal.roles),
                            permissions=sorted(principal.permissions))
