"""The tus 1.0.0 protocol, case by case, in-process on each backend.

Each test covers cases of the public compliance suite sagikazarmark/tus-compliance-tests
(named in a comment: cp-* for the core protocol, ext-* for the extensions the gateway
advertises, scn-* for its scenarios, opt-* for behaviour the protocol leaves open). Where
the gateway chose among what tus allows, README.md ("Resumable uploads (tus)") says why.
"""

import asyncio
import base64
import hashlib
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

import httpx
import pytest
from starlette.requests import ClientDisconnect

from gateway.app import create_app
from gateway.settings import Settings
from gateway.tus import encode_metadata

VERSION = "1.0.0"
TUS = {"Tus-Resumable": VERSION}
OCTETS = "application/offset+octet-stream"
BODY = b"resumable bytes\n"  # 16 bytes
MiB = 1024 * 1024
# RFC 9110's IMF-fixdate, the one form Upload-Expires may take
HTTP_DATE = re.compile(
    r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{2} (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
    r" \d{4} \d{2}:\d{2}:\d{2} GMT"
)


async def create(client: httpx.AsyncClient, length: int | None = 100, /, **headers: str) -> str:
    sent = {**TUS, **headers}
    if length is not None:
        sent["Upload-Length"] = str(length)
    response = await client.post("/uploads/", headers=sent)
    assert response.status_code == 201, response.text
    return response.headers["location"]


async def patch(
    client: httpx.AsyncClient,
    url: str,
    offset: int | str,
    data: bytes | AsyncIterator[bytes],
    **headers: str,
) -> httpx.Response:
    sent = {**TUS, "Content-Type": OCTETS, "Upload-Offset": str(offset), **headers}
    return await client.patch(url, content=data, headers=sent)


async def offset_of(client: httpx.AsyncClient, url: str) -> int:
    response = await client.head(url, headers=TUS)
    assert response.status_code == 200, response.status_code
    return int(response.headers["upload-offset"])


def sha1(data: bytes) -> str:
    return "sha1 " + base64.b64encode(hashlib.sha1(data).digest()).decode()


def upload_records(settings: Settings) -> int:
    """How many resumable uploads the backend holds, so that a refused creation can be seen
    to have left none."""
    if settings.backend == "local":
        return len(list((settings.data_dir / "uploads").glob("*.json")))
    import boto3

    s3 = boto3.client("s3", endpoint_url=settings.s3_endpoint_url, region_name="us-east-1")
    listing = s3.list_objects_v2(Bucket=settings.s3_bucket, Prefix=".gateway/uploads/")
    return sum(entry["Key"].endswith("/state") for entry in listing.get("Contents", []))


# --- OPTIONS ---------------------------------------------------------------------------------


async def test_options_answers_whatever_tus_resumable_says(client: httpx.AsyncClient) -> None:
    # cp-opt-002: no Tus-Resumable needed; cp-opt-006: an unsupported one is ignored
    for headers in ({}, TUS, {"Tus-Resumable": "99.99.99"}):
        for url in ("/uploads/", "/uploads/0123456789abcdef0123456789abcdef"):
            response = await client.options(url, headers=headers)
            assert response.status_code == 200, (url, headers)
            assert response.headers["tus-version"] == VERSION


async def test_options_describes_versions_extensions_and_limits(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    response = await client.options("/uploads/")
    # cp-opt-001, cp-opt-003, cp-ver-003: versions, most preferred first, 1.0.0 among them
    versions = response.headers["tus-version"].split(",")
    assert all(re.fullmatch(r"\d+\.\d+\.\d+", v) for v in versions) and VERSION in versions
    # cp-opt-004: the extensions as a list of tokens (and creation-with-upload with creation)
    extensions = response.headers["tus-extension"].split(",")
    assert all(re.fullmatch(r"[a-z-]+", e) for e in extensions)
    assert set(extensions) >= {"creation", "creation-with-upload", "creation-defer-length"}
    assert set(extensions) >= {"termination", "checksum", "expiration"}
    assert not set(extensions) & {"concatenation", "checksum-trailer"}
    # cp-opt-005: Tus-Max-Size, a non-negative integer, is the configured limit
    assert response.headers["tus-max-size"] == str(int(settings.max_upload_bytes))
    # ext-csum-001, ext-csum-002: the checksum algorithms, sha1 among them
    algorithms = response.headers["tus-checksum-algorithm"].split(",")
    assert all(re.fullmatch(r"[a-z0-9-]+", a) for a in algorithms) and "sha1" in algorithms


# --- versions --------------------------------------------------------------------------------


async def test_an_unsupported_version_is_412_with_tus_version_and_changes_nothing(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    url = await create(client)
    before = upload_records(settings)
    for version in ("99.99.99", "0.0.1", "1.0", ""):
        wrong = {"Tus-Resumable": version}
        # cp-ver-001, cp-ver-002: HEAD
        head = await client.head(url, headers=wrong)
        # cp-ver-004: POST, not processed: no Location, no upload
        post = await client.post("/uploads/", headers={**wrong, "Upload-Length": "10"})
        assert "location" not in post.headers and upload_records(settings) == before
        # cp-ver-005: PATCH, the offset unchanged
        patched = await patch(client, url, 0, BODY, **wrong)
        deleted = await client.delete(url, headers=wrong)
        for response in (head, post, patched, deleted):
            assert response.status_code == 412, (version, response.request.method)
            assert VERSION in response.headers["tus-version"].split(",")
            assert response.headers["tus-resumable"] == VERSION
        assert await offset_of(client, url) == 0


async def test_requests_without_tus_resumable_are_refused(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    url = await create(client)
    before = upload_records(settings)
    # ext-create-003, cp-err-001: POST, with a problem that says why, and nothing created
    post = await client.post("/uploads/", headers={"Upload-Length": "100"})
    assert post.status_code == 412 and "location" not in post.headers
    assert "Tus-Resumable" in post.json()["detail"]
    assert upload_records(settings) == before
    # cp-head-003: HEAD
    assert (await client.head(url)).status_code == 412
    # cp-patch-001: PATCH, the offset unchanged
    bare = await client.patch(
        url, content=BODY, headers={"Content-Type": OCTETS, "Upload-Offset": "0"}
    )
    assert bare.status_code == 412
    assert await offset_of(client, url) == 0
    # ext-term-002: DELETE, the upload still there
    assert (await client.delete(url)).status_code == 412
    assert (await client.head(url, headers=TUS)).status_code == 200


# --- HEAD ------------------------------------------------------------------------------------


async def test_head_of_a_new_upload(client: httpx.AsyncClient) -> None:
    url = await create(client, 100)
    response = await client.head(url, headers=TUS)
    assert response.status_code == 200
    assert response.headers["upload-offset"] == "0"  # cp-head-001, cp-head-007
    assert response.headers["upload-length"] == "100"  # cp-head-002
    assert "no-store" in response.headers["cache-control"]  # cp-head-004
    assert response.headers["tus-resumable"] == VERSION  # cp-head-006


async def test_unknown_uploads_are_404(client: httpx.AsyncClient) -> None:
    for url in ("/uploads/non-existent-upload-id-12345", "/uploads/" + "0" * 32):
        # cp-head-005: without Upload-Offset
        head = await client.head(url, headers=TUS)
        assert head.status_code == 404 and "upload-offset" not in head.headers
        # cp-patch-008
        assert (await patch(client, url, 0, BODY)).status_code == 404
        # ext-term-004
        assert (await client.delete(url, headers=TUS)).status_code == 404


# --- PATCH -----------------------------------------------------------------------------------


async def test_a_patch_appends_and_says_the_new_offset(client: httpx.AsyncClient) -> None:
    url = await create(client, 2 * len(BODY))
    response = await patch(client, url, 0, BODY)
    assert response.status_code == 204  # cp-patch-006
    assert response.headers["upload-offset"] == str(len(BODY))  # cp-patch-007
    assert response.headers["tus-resumable"] == VERSION  # cp-patch-009
    # opt-partial-003: the offset reported is the one stored
    assert await offset_of(client, url) == len(BODY)


async def test_a_patch_of_another_content_type_is_415_and_changes_nothing(
    client: httpx.AsyncClient,
) -> None:
    # cp-patch-002 (no Content-Type), cp-patch-003 (another one)
    url = await create(client)
    for content_type in (None, "text/plain", "application/octet-stream"):
        headers = {**TUS, "Upload-Offset": "0"}
        if content_type is not None:
            headers["Content-Type"] = content_type
        response = await client.patch(url, content=BODY, headers=headers)
        assert response.status_code == 415, content_type
        assert await offset_of(client, url) == 0


async def test_a_patch_without_a_valid_upload_offset_is_400_and_changes_nothing(
    client: httpx.AsyncClient,
) -> None:
    # cp-patch-004 (none), cp-patch-011 (negative), cp-patch-012 (not an integer)
    url = await create(client)
    for offset in (None, "-1", "abc", "1.5", "0x10", ""):
        headers = {**TUS, "Content-Type": OCTETS}
        if offset is not None:
            headers["Upload-Offset"] = offset
        response = await client.patch(url, content=BODY, headers=headers)
        assert response.status_code == 400, offset
        assert "Upload-Offset" in response.json()["detail"]
        assert await offset_of(client, url) == 0


async def test_a_patch_at_another_offset_is_409_and_says_the_right_one(
    client: httpx.AsyncClient,
) -> None:
    url = await create(client)
    assert (await patch(client, url, 0, BODY)).status_code == 204
    for wrong in (0, 50):
        # cp-patch-005: 409, the upload unchanged
        response = await patch(client, url, wrong, b"stale bytes")
        assert response.status_code == 409
        # opt-err-002: the 409 names the upload's offset
        assert response.headers["upload-offset"] == str(len(BODY))
    assert await offset_of(client, url) == len(BODY)


async def test_bytes_past_the_upload_length_are_413_and_not_kept(
    client: httpx.AsyncClient,
) -> None:
    # cp-patch-010: declared by Content-Length
    url = await create(client, 5)
    assert (await patch(client, url, 0, BODY)).status_code == 413
    assert await offset_of(client, url) == 0

    # ... and found out while the body streams in (no Content-Length)
    async def chunked() -> AsyncIterator[bytes]:
        yield b"abc"
        yield b"defg"

    assert (await patch(client, url, 0, chunked())).status_code == 413
    assert await offset_of(client, url) == 0
    assert (await patch(client, url, 0, b"abcde")).status_code == 204


# --- X-HTTP-Method-Override ----------------------------------------------------------------


async def test_a_post_may_stand_for_patch(client: httpx.AsyncClient) -> None:
    # cp-override-001
    url = await create(client, len(BODY))
    headers = {
        **TUS,
        "X-HTTP-Method-Override": "PATCH",
        "Content-Type": OCTETS,
        "Upload-Offset": "0",
    }
    response = await client.post(url, content=BODY, headers=headers)
    assert response.status_code == 204
    assert response.headers["upload-offset"] == str(len(BODY))
    head = await client.post(url, headers={**TUS, "X-HTTP-Method-Override": "HEAD"})
    assert head.status_code == 200 and head.headers["upload-offset"] == str(len(BODY))


async def test_a_post_may_stand_for_delete(client: httpx.AsyncClient) -> None:
    # ext-term-006
    url = await create(client)
    response = await client.post(url, headers={**TUS, "X-HTTP-Method-Override": "DELETE"})
    assert response.status_code == 204
    assert (await client.head(url, headers=TUS)).status_code == 404


async def test_an_override_to_no_tus_method_creates_nothing(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    before = upload_records(settings)
    headers = {**TUS, "Upload-Length": "10", "X-HTTP-Method-Override": "GET"}
    response = await client.post("/uploads/", headers=headers)
    assert response.status_code == 405 and "location" not in response.headers
    assert upload_records(settings) == before
    garbled = {**headers, "X-HTTP-Method-Override": "PATCH, DELETE"}
    response = await client.post("/uploads/", headers=garbled)
    assert response.status_code == 400 and "location" not in response.headers
    assert upload_records(settings) == before


# --- creation --------------------------------------------------------------------------------


async def test_creation_answers_201_with_an_absolute_location(client: httpx.AsyncClient) -> None:
    response = await client.post("/uploads/", headers={**TUS, "Upload-Length": "100"})
    assert response.status_code == 201  # ext-create-001
    assert response.headers["tus-resumable"] == VERSION  # ext-create-011
    location = response.headers["location"]
    # ext-create-002, ext-create-009, opt-url-001: absolute, and it resolves
    assert re.fullmatch(r"http://gateway\.test/uploads/[0-9a-f]{32}", location)
    assert (await client.head(location, headers=TUS)).status_code == 200


async def test_creation_needs_a_length_or_a_deferred_one(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    # ext-create-012
    response = await client.post("/uploads/", headers=TUS)
    assert response.status_code == 400 and "location" not in response.headers
    assert upload_records(settings) == 0


async def test_a_malformed_upload_length_is_400_and_creates_nothing(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    # cp-err-003 (not an integer); cp-err-002 (negative), the problem naming the header
    for length in ("abc", "-1", "1e3", "12 34"):
        response = await client.post("/uploads/", headers={**TUS, "Upload-Length": length})
        assert response.status_code == 400 and "location" not in response.headers, length
        assert "Upload-Length" in response.json()["detail"]
    assert upload_records(settings) == 0


async def test_a_length_over_tus_max_size_is_413(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    # ext-create-007, opt-store-003: one byte over, and a petabyte
    for length in (int(settings.max_upload_bytes) + 1, 1 << 50):
        response = await client.post("/uploads/", headers={**TUS, "Upload-Length": str(length)})
        assert response.status_code == 413 and "location" not in response.headers, length
    assert upload_records(settings) == 0


async def test_metadata_is_kept_and_echoed_exactly(client: httpx.AsyncClient) -> None:
    # ext-create-004, ext-create-005, ext-create-006: valid metadata is accepted ...
    sent = encode_metadata(
        {
            "filename": "notes.txt",
            "filetype": "text/plain",
            "content-type": "text/plain",
            "size": "100",
            "description": "Ein Test, mit Komma",
            "empty": "",
        }
    )
    url = await create(client, **{"Upload-Metadata": sent})
    # ... ext-create-010, ext-create-013, opt-meta-006: and HEAD gives it back as sent
    response = await client.head(url, headers=TUS)
    assert response.headers["upload-metadata"] == sent


async def test_malformed_metadata_is_400(client: httpx.AsyncClient, settings: Settings) -> None:
    for metadata in (
        b"filename not_valid_base64!!!",  # opt-meta-001
        b"filename dGVzdC50eHQ=,filename ZHVwbGljYXRl",  # opt-meta-002
        "fïlename dGVzdA==".encode(),  # opt-meta-005: not ASCII
        b"largedata " + base64.b64encode(b"A" * 8192),  # opt-meta-004: over 4 KiB
    ):
        headers = {b"Tus-Resumable": b"1.0.0", b"Upload-Length": b"100"}
        response = await client.post("/uploads/", headers={**headers, b"Upload-Metadata": metadata})
        assert response.status_code == 400 and "location" not in response.headers, metadata
    assert upload_records(settings) == 0


async def test_ambiguous_metadata_is_read_as_pairs(client: httpx.AsyncClient) -> None:
    for metadata in (
        " dGVzdA==",  # ext-create-014: an empty key, or a key with no value once trimmed
        "bad,key dGVzdA==",  # ext-create-015: a comma in a key reads as two pairs
        "emptykey",  # opt-meta-003: a key without a value
        "filename dGVzdA==,emptykey",
    ):
        url = await create(client, **{"Upload-Metadata": metadata})
        echoed = (await client.head(url, headers=TUS)).headers["upload-metadata"]
        assert echoed == ",".join(pair.strip() for pair in metadata.split(","))


async def test_two_creations_of_one_file_are_two_uploads(client: httpx.AsyncClient) -> None:
    # opt-conc-003, opt-url-002: distinct, unguessable URLs
    metadata = {"Upload-Metadata": encode_metadata({"filename": "same.txt"})}
    first = await create(client, **metadata)
    second = await create(client, **metadata)
    assert first != second
    for url in (first, second):
        assert (await client.head(url, headers=TUS)).status_code == 200


async def test_an_empty_upload_is_complete_at_once(client: httpx.AsyncClient) -> None:
    # ext-create-008, scn-basic-004, opt-csum-001
    url = await create(client, 0, **{"Upload-Metadata": encode_metadata({"key": "zero"})})
    response = await client.head(url, headers=TUS)
    assert response.status_code == 200
    assert response.headers["upload-offset"] == "0" and response.headers["upload-length"] == "0"
    assert (await client.get("/objects/zero")).content == b""


# --- uploads start to finish ------------------------------------------------------------------


async def test_an_upload_resumes_from_the_offset_head_reports(client: httpx.AsyncClient) -> None:
    plans = {
        "one": [b"whole file\n"],  # scn-basic-001, scn-resume-001
        "thirds": [b"A" * 11, b"B" * 11, b"C" * 11],  # scn-basic-002
        "halves": [b"A" * 11, b"B" * 11],  # scn-basic-003, scn-resume-002
        "nearly": [b"A" * 101, b"Z\n"],  # scn-resume-003
        "quarters": [b"A" * 11, b"B" * 11, b"C" * 11, b"D" * 11],  # scn-resume-004
    }
    for key, chunks in plans.items():
        data = b"".join(chunks)
        metadata = {"Upload-Metadata": encode_metadata({"key": key})}
        url = await create(client, len(data), **metadata)
        for chunk in chunks:
            offset = await offset_of(client, url)  # the client comes back, asks where it was
            response = await patch(client, url, offset, chunk)
            assert response.status_code == 204, key
            assert response.headers["upload-offset"] == str(offset + len(chunk))
        # opt-comp-002: complete when the offset reaches the length
        head = await client.head(url, headers=TUS)
        assert head.headers["upload-offset"] == head.headers["upload-length"] == str(len(data))
        assert (await client.get(f"/objects/{key}")).content == data
        # opt-comp-001: an empty PATCH at the end of a complete upload changes nothing
        again = await patch(client, url, len(data), b"")
        assert again.status_code == 204 and again.headers["upload-offset"] == str(len(data))


async def test_a_client_with_a_stale_offset_recovers(client: httpx.AsyncClient) -> None:
    # scn-error-001
    url = await create(client, 22, **{"Upload-Metadata": encode_metadata({"key": "stale"})})
    assert (await patch(client, url, 0, b"A" * 11)).status_code == 204
    assert (await patch(client, url, 0, b"W" * 11)).status_code == 409
    offset = await offset_of(client, url)
    assert offset == 11
    assert (await patch(client, url, offset, b"B" * 11)).status_code == 204
    assert (await client.get("/objects/stale")).content == b"A" * 11 + b"B" * 11


# --- creation-with-upload -----------------------------------------------------------------


async def test_creation_may_carry_the_whole_upload(client: httpx.AsyncClient) -> None:
    # ext-cwu-001, ext-cwu-003, ext-cwu-005
    headers = {
        **TUS,
        "Upload-Length": str(len(BODY)),
        "Content-Type": OCTETS,
        "Upload-Metadata": encode_metadata({"key": "in-one"}),
    }
    response = await client.post("/uploads/", content=BODY, headers=headers)
    assert response.status_code == 201 and "location" in response.headers
    assert response.headers["upload-offset"] == str(len(BODY))
    head = await client.head(response.headers["location"], headers=TUS)
    assert head.headers["upload-offset"] == head.headers["upload-length"] == str(len(BODY))
    assert (await client.get("/objects/in-one")).content == BODY


async def test_creation_may_carry_the_first_bytes(client: httpx.AsyncClient) -> None:
    # ext-cwu-004: the offset says how much was taken, and HEAD agrees
    headers = {**TUS, "Upload-Length": "100", "Content-Type": OCTETS}
    response = await client.post("/uploads/", content=BODY, headers=headers)
    assert response.status_code == 201
    taken = int(response.headers["upload-offset"])
    assert taken == len(BODY)
    assert await offset_of(client, response.headers["location"]) == taken


async def test_a_creation_body_of_another_content_type_is_415(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    # ext-cwu-002: the PATCH rules apply to the body; nothing is created
    for content_type in ("text/plain", "application/octet-stream", None):
        headers = {**TUS, "Upload-Length": str(len(BODY))}
        if content_type is not None:
            headers["Content-Type"] = content_type
        response = await client.post("/uploads/", content=BODY, headers=headers)
        assert response.status_code == 415 and "location" not in response.headers, content_type
    assert upload_records(settings) == 0


async def test_a_creation_body_may_carry_a_checksum(client: httpx.AsyncClient) -> None:
    # opt-csum-003
    headers = {
        **TUS,
        "Upload-Length": str(len(BODY)),
        "Content-Type": OCTETS,
        "Upload-Checksum": sha1(BODY),
    }
    response = await client.post("/uploads/", content=BODY, headers=headers)
    assert response.status_code == 201
    assert response.headers["upload-offset"] == str(len(BODY))


# --- creation-defer-length ------------------------------------------------------------------


async def test_a_deferred_length_is_set_by_a_patch(client: httpx.AsyncClient) -> None:
    # ext-defer-001
    url = await create(client, None, **{"Upload-Defer-Length": "1"})
    # ext-defer-002: HEAD says the length is deferred, and gives none
    head = await client.head(url, headers=TUS)
    assert head.headers["upload-defer-length"] == "1" and "upload-length" not in head.headers
    assert head.headers["upload-offset"] == "0"
    # ext-defer-003
    response = await patch(client, url, 0, BODY, **{"Upload-Length": str(len(BODY))})
    assert response.status_code == 204 and response.headers["upload-offset"] == str(len(BODY))
    head = await client.head(url, headers=TUS)
    assert head.headers["upload-length"] == str(len(BODY))
    assert "upload-defer-length" not in head.headers


async def test_a_length_once_set_cannot_change(client: httpx.AsyncClient) -> None:
    # ext-defer-004
    url = await create(client, None, **{"Upload-Defer-Length": "1"})
    assert (await patch(client, url, 0, b"four", **{"Upload-Length": "100"})).status_code == 204
    changed = await patch(client, url, 4, b"more", **{"Upload-Length": "200"})
    assert changed.status_code == 400
    head = await client.head(url, headers=TUS)
    assert head.headers["upload-length"] == "100" and head.headers["upload-offset"] == "4"
    # the same length again is no change
    same = await patch(client, url, 4, b"more", **{"Upload-Length": "100"})
    assert same.status_code == 204


async def test_a_length_given_at_creation_cannot_change(client: httpx.AsyncClient) -> None:
    # opt-store-002: refused with 400, the length kept
    url = await create(client, 100)
    response = await patch(client, url, 0, b"four", **{"Upload-Length": "200"})
    assert response.status_code == 400
    head = await client.head(url, headers=TUS)
    assert head.headers["upload-length"] == "100" and head.headers["upload-offset"] == "0"


async def test_a_bad_deferred_length_is_400(client: httpx.AsyncClient, settings: Settings) -> None:
    for headers in (
        {"Upload-Defer-Length": "1", "Upload-Length": "100"},  # ext-defer-005
        {"Upload-Defer-Length": "0"},  # ext-defer-006
        {"Upload-Defer-Length": "true"},  # ext-defer-007
        {"Upload-Defer-Length": "2"},
    ):
        response = await client.post("/uploads/", headers={**TUS, **headers})
        assert response.status_code == 400 and "location" not in response.headers, headers
    assert upload_records(settings) == 0


# --- termination -----------------------------------------------------------------------------


async def test_a_terminated_upload_is_gone(client: httpx.AsyncClient) -> None:
    url = await create(client)
    assert (await patch(client, url, 0, BODY)).status_code == 204
    response = await client.delete(url, headers=TUS)
    assert response.status_code == 204  # ext-term-001
    assert response.headers["tus-resumable"] == VERSION  # ext-term-007
    # ext-term-003: later requests find nothing
    assert (await client.head(url, headers=TUS)).status_code == 404
    assert (await patch(client, url, len(BODY), BODY)).status_code == 404
    assert (await client.delete(url, headers=TUS)).status_code == 404


async def test_a_complete_upload_can_be_terminated_and_its_object_stays(
    client: httpx.AsyncClient,
) -> None:
    # ext-term-005
    metadata = {"Upload-Metadata": encode_metadata({"key": "kept"})}
    url = await create(client, len(BODY), **metadata)
    assert (await patch(client, url, 0, BODY)).status_code == 204
    assert (await client.delete(url, headers=TUS)).status_code == 204
    assert (await client.head(url, headers=TUS)).status_code == 404
    assert (await client.get("/objects/kept")).content == BODY


# --- checksum -------------------------------------------------------------------------------


async def test_a_matching_checksum_is_accepted(client: httpx.AsyncClient) -> None:
    # ext-csum-003, ext-csum-007, opt-csum-002
    url = await create(client, 3 * len(BODY))
    for offset, algorithm in enumerate(("sha1", "md5", "sha256")):
        digest = base64.b64encode(hashlib.new(algorithm, BODY).digest()).decode()
        checksum = {"Upload-Checksum": f"{algorithm} {digest}"}
        response = await patch(client, url, offset * len(BODY), BODY, **checksum)
        assert response.status_code == 204, algorithm
        assert response.headers["upload-offset"] == str((offset + 1) * len(BODY))


async def test_a_checksum_mismatch_is_460_and_the_chunk_can_be_sent_again(
    client: httpx.AsyncClient,
) -> None:
    url = await create(client, len(BODY))
    for wrong in ("sha1 " + "A" * 28, "sha1 " + "A" * 27 + "=", sha1(b"other bytes")):
        response = await patch(client, url, 0, BODY, **{"Upload-Checksum": wrong})
        assert response.status_code == 460  # ext-csum-004
        assert response.headers["tus-resumable"] == VERSION  # ext-csum-009
        assert await offset_of(client, url) == 0  # ext-csum-005
    # ext-csum-008, scn-error-002
    response = await patch(client, url, 0, BODY, **{"Upload-Checksum": sha1(BODY)})
    assert response.status_code == 204 and response.headers["upload-offset"] == str(len(BODY))


async def test_a_malformed_checksum_is_400_and_changes_nothing(client: httpx.AsyncClient) -> None:
    url = await create(client, len(BODY))
    for checksum in (
        "unknownalgo AAAAAAAAAA",  # ext-csum-006, ext-csum-012
        "crc32 AAAAAA==",
        "sha1" + sha1(BODY).removeprefix("sha1 "),  # ext-csum-010: no space
        "sha1 not_base64!!!",  # ext-csum-011
        "sha1",
    ):
        response = await patch(client, url, 0, BODY, **{"Upload-Checksum": checksum})
        assert response.status_code == 400, checksum
        assert await offset_of(client, url) == 0


async def test_a_broken_off_chunk_with_a_checksum_is_not_kept(client: httpx.AsyncClient) -> None:
    # ext-csum-005: bytes that could not be checked against Upload-Checksum are not accepted
    url = await create(client, 3 * MiB)
    data = b"x" * (3 * MiB)

    async def breaks_off() -> AsyncIterator[bytes]:
        yield data[: 2 * MiB]
        raise ClientDisconnect()  # as the gateway sees a client that went away

    await patch(client, url, 0, breaks_off(), **{"Upload-Checksum": sha1(data)})
    assert await offset_of(client, url) == 0
    response = await patch(client, url, 0, data, **{"Upload-Checksum": sha1(data)})
    assert response.status_code == 204


async def test_an_empty_chunk_with_the_checksum_of_nothing(client: httpx.AsyncClient) -> None:
    # opt-csum-001
    url = await create(client, len(BODY))
    response = await patch(client, url, 0, b"", **{"Upload-Checksum": sha1(b"")})
    assert response.status_code == 204 and response.headers["upload-offset"] == "0"


# --- expiration -------------------------------------------------------------------------------


def expiry(response: httpx.Response) -> datetime:
    value = response.headers["upload-expires"]
    assert HTTP_DATE.fullmatch(value), value
    return parsedate_to_datetime(value)


async def test_creation_patch_and_head_say_when_the_upload_expires(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    created = await client.post("/uploads/", headers={**TUS, "Upload-Length": "100"})
    # ext-expire-001, opt-exp-003: in the future, to the second, as an HTTP date
    first = expiry(created)
    assert (
        now + settings.upload_expiry <= first <= now + settings.upload_expiry + timedelta(seconds=5)
    )
    url = created.headers["location"]
    # ext-expire-002, ext-expire-003
    patched = await patch(client, url, 0, b"first chunk\n")
    assert patched.status_code == 204
    # opt-exp-001: activity moves the expiry on, never back
    assert expiry(patched) >= first
    assert expiry(await client.head(url, headers=TUS)) >= first


@pytest.fixture
async def short_lived(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """A client of a gateway whose uploads expire one second after their last request."""
    application = create_app(settings.model_copy(update={"upload_expiry": timedelta(seconds=1)}))
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as c:
            yield c


async def test_an_expired_upload_is_refused_and_a_new_one_can_start(
    short_lived: httpx.AsyncClient,
) -> None:
    client = short_lived
    url = await create(client)
    assert (await patch(client, url, 0, b"partial data")).status_code == 204
    deadline = datetime.now(UTC) + timedelta(seconds=20)
    while (head := await client.head(url, headers=TUS)).status_code == 200:
        assert datetime.now(UTC) < deadline, "the upload never expired"
        await asyncio.sleep(0.05)
    # ext-expire-004: 404 or 410; ext-expire-005: 410 while the gateway still knows of it
    assert head.status_code in (404, 410)
    assert (await patch(client, url, 12, b"more")).status_code in (404, 410)
    # scn-error-003: the client starts over with a new upload
    fresh = await create(client)
    assert fresh != url and await offset_of(client, fresh) == 0
