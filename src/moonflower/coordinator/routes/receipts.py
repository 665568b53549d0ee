"""`GET /v1/receipts/{job_id}`: a job's verified provider receipt, for the account it served.

With the provider's attested statement (from `/v1/providers/attestation` at the time, or
kept by the consumer), anyone can check it offline: `moonflower verify`."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from moonflower import errors
from moonflower.coordinator.deps import ApiCaller, ServicesDep
from moonflower.coordinator.services import json_response
from moonflower.crypto.receipt import receipt_hash
from moonflower.ledger.receipts import find_receipt

router = APIRouter()


@router.get("/v1/receipts/{job_id}")
async def get_receipt(job_id: str, services: ServicesDep, caller: ApiCaller) -> Response:
    found = await find_receipt(services.db, job_id, account_id=caller.account_id)
    if found is None:
        raise errors.RouteNotFound(f"No receipt for job '{job_id}' belongs to this account.")
    return json_response(
        {
            "object": "receipt",
            "job_id": found.job_id,
            "provider_id": found.provider_id,
            "receipt": found.receipt_json,
            "signature": found.signature,
            "response_hash": receipt_hash(found.receipt_json),
            "signing_public_key": found.signing_public_key,
        }
    )
