"""SigV4 signing of the lean S3 client: AWS's published example, and botocore's answer."""

from __future__ import annotations

import datetime

import botocore
import botocore.session
import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials as BotoCredentials

from trialsync._stores import s3_client
from trialsync._stores.s3_client import (
    EMPTY_SHA256,
    UNSIGNED_PAYLOAD,
    Credentials,
    S3Client,
    S3Error,
    parse_listing,
)

# The "GET Object" example of AWS's "Signature Calculations for the Authorization Header"
# page (Amazon S3 API reference, sigv4-header-based-auth).
EXAMPLE = Credentials("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
WHEN = datetime.datetime(2013, 5, 24, tzinfo=datetime.UTC)


def test_aws_documented_get_object_example() -> None:
    headers = s3_client.sign(
        "GET",
        "examplebucket.s3.amazonaws.com",
        "/test.txt",
        {},
        {"Range": "bytes=0-9"},
        EXAMPLE,
        "us-east-1",
        WHEN,
        EMPTY_SHA256,
    )
    assert headers["Authorization"] == (
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
        "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
        "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
    )
    assert headers["x-amz-date"] == "20130524T000000Z"


def _botocore_signature(
    method: str, url: str, credentials: Credentials, region: str, payload: str
) -> str:
    request = AWSRequest(method=method, url=url, headers={"X-Amz-Content-SHA256": payload})
    request.context["timestamp"] = WHEN.strftime("%Y%m%dT%H%M%SZ")
    boto = BotoCredentials(credentials.access_key, credentials.secret_key, credentials.token)
    auth = S3SigV4Auth(boto, "s3", region)
    request.headers["X-Amz-Date"] = request.context["timestamp"]
    if credentials.token:
        request.headers["X-Amz-Security-Token"] = credentials.token
    canonical = auth.canonical_request(request)
    return str(auth.signature(auth.string_to_sign(request, canonical), request))


@pytest.mark.parametrize(
    ("method", "key", "query", "token"),
    [
        ("PUT", "exp/trial_0/checkpoint_000001/model.pt", {}, None),
        ("PUT", "exp/a b+c=d,e/f~g.bin", {"partNumber": "3", "uploadId": "u/1+2=3"}, "tok/en="),
        ("GET", "", {"list-type": "2", "prefix": "exp/a b/", "encoding-type": "url"}, None),
        ("POST", "exp/model.pt", {"uploads": ""}, "session"),
    ],
)
def test_signature_matches_botocore(
    method: str, key: str, query: dict[str, str], token: str | None
) -> None:
    credentials = Credentials("AKIDEXAMPLE", "secret/with+chars", token)
    path = "/bucket/" + s3_client.quote(key, safe="/~") if key else "/bucket"
    ours = s3_client.sign(method, "127.0.0.1:8333", path, query, {}, credentials, "eu-west-1", WHEN)
    qs = s3_client.canonical_query(query)
    url = f"http://127.0.0.1:8333{path}" + (f"?{qs}" if qs else "")
    theirs = _botocore_signature(method, url, credentials, "eu-west-1", UNSIGNED_PAYLOAD)
    assert ours["Authorization"].endswith(f"Signature={theirs}")
    assert ("x-amz-security-token" in ours) == bool(token)


def test_signing_keys_are_cached_per_day_and_region() -> None:
    cache: dict[tuple[str, str, str], bytes] = {}
    s3_client.sign("GET", "h", "/b", {}, {}, EXAMPLE, "us-east-1", WHEN, key_cache=cache)
    s3_client.sign("GET", "h", "/b", {}, {}, EXAMPLE, "us-east-1", WHEN, key_cache=cache)
    assert list(cache) == [(EXAMPLE.secret_key, "20130524", "us-east-1")]
    later = WHEN + datetime.timedelta(days=1)
    s3_client.sign("GET", "h", "/b", {}, {}, EXAMPLE, "us-east-1", later, key_cache=cache)
    assert list(cache) == [(EXAMPLE.secret_key, "20130525", "us-east-1")]


@pytest.mark.parametrize(
    ("options", "lean"),
    [
        ({}, True),
        ({"endpoint_url": "http://s3:8333", "key": "k", "secret": "s"}, True),
        ({"client_kwargs": {"region_name": "eu-west-1"}}, True),
        ({"config_kwargs": {"s3": {"addressing_style": "path"}}}, True),
        ({"s3_additional_kwargs": {"ServerSideEncryption": "aws:kms"}}, False),
        ({"requester_pays": True}, False),
        ({"client_kwargs": {"aws_account_id": "1"}}, False),
        ({"config_kwargs": {"s3": {"use_accelerate_endpoint": True}}}, False),
    ],
)
def test_options_that_need_botocore_keep_the_store_on_s3fs(
    options: dict[str, object], lean: bool
) -> None:
    assert s3_client.supports(options) is lean


def _botocore_client(**kwargs: object) -> object:
    session = botocore.session.get_session()
    return session.create_client(
        "s3", aws_access_key_id="AKID", aws_secret_access_key="secret", **kwargs
    )


def test_a_custom_endpoint_uses_path_style_and_the_clients_credentials() -> None:
    client = _botocore_client(endpoint_url="http://seaweedfs:8333", region_name="eu-west-1")
    lean = S3Client.from_botocore(client)
    assert lean is not None
    assert (lean.endpoint, lean.region) == ("http://seaweedfs:8333", "eu-west-1")
    assert lean._url("bucket", "a b/c", lean.region) == (
        "http://seaweedfs:8333",
        "seaweedfs:8333",
        "/bucket/a%20b/c",
    )
    assert lean._credentials.get_frozen_credentials().access_key == "AKID"


def test_aws_uses_virtual_hosts_and_follows_the_buckets_region() -> None:
    lean = S3Client.from_botocore(_botocore_client(region_name="us-west-2"))
    assert lean is not None
    assert lean._url("bucket", "k", "us-west-2") == (
        "https://bucket.s3.us-west-2.amazonaws.com",
        "bucket.s3.us-west-2.amazonaws.com",
        "/k",
    )
    assert lean._url("bucket", "k", "eu-central-1")[1] == "bucket.s3.eu-central-1.amazonaws.com"
    # A dotted bucket name cannot be a TLS-valid virtual host.
    assert lean._url("my.bucket", "k", "us-west-2")[2] == "/my.bucket/k"


def test_anonymous_access_signs_nothing() -> None:
    client = _botocore_client(config=Config(signature_version=botocore.UNSIGNED))
    lean = S3Client.from_botocore(client)
    assert lean is not None
    assert lean._credentials is None


def _page(body: str, ns: str = ' xmlns="http://s3.amazonaws.com/doc/2006-03-01/"') -> bytes:
    return f"<?xml version='1.0'?><ListBucketResult{ns}>{body}</ListBucketResult>".encode()


CONTENTS = (
    "<Contents><Key>{}</Key><LastModified>2026-11-26T03:48:14.000Z</LastModified>"
    '<ETag>"abc"</ETag><Size>7</Size></Contents>'
)


def test_listed_keys_are_decoded_only_when_the_server_encoded_them() -> None:
    encoded = _page("<EncodingType>url</EncodingType>" + CONTENTS.format("a%2Bb+c%3D"))
    assert [i.key for i in parse_listing(encoded, "GET")[0]] == ["a+b c="]
    plain = _page(CONTENTS.format("a+b"))  # a server that ignored encoding-type=url
    (item,), token = parse_listing(plain, "GET")
    assert (item.key, item.size, item.etag, token) == ("a+b", 7, "abc", None)
    assert item.mtime == datetime.datetime(2026, 11, 26, 3, 48, 14, tzinfo=datetime.UTC).timestamp()


def test_a_listing_without_namespace_and_a_truncated_one() -> None:
    page = _page(
        "<IsTruncated>true</IsTruncated><NextContinuationToken>t1</NextContinuationToken>"
        + CONTENTS.format("k"),
        ns="",
    )
    items, token = parse_listing(page, "GET")
    assert ([i.key for i in items], token) == (["k"], "t1")
    with pytest.raises(S3Error, match="truncated listing without a continuation token"):
        parse_listing(_page("<IsTruncated>true</IsTruncated>"), "GET")
    with pytest.raises(S3Error, match="unreadable answer"):
        parse_listing(b"<ListBucketResult", "GET")


def test_an_error_document_in_a_200_answer_is_recognised() -> None:
    error = b"<?xml version='1.0'?>\n<Error><Code>InternalError</Code><Message>m</Message></Error>"
    assert s3_client._is_error_document(error)
    assert not s3_client._is_error_document(b"<CompleteMultipartUploadResult/>")
    assert not s3_client._is_error_document(b"")


@pytest.mark.parametrize(
    ("endpoint", "host"),
    [
        ("https://s3.example.com:443", "s3.example.com"),
        ("http://s3.example.com:80", "s3.example.com"),
        ("http://127.0.0.1:8333", "127.0.0.1:8333"),
        ("http://[::1]:9000", "[::1]:9000"),
    ],
)
def test_the_signed_host_is_the_one_sent(endpoint: str, host: str) -> None:
    lean = S3Client(endpoint, "us-east-1", None, path_style=True)
    assert lean._url("b", "k", "us-east-1")[1] == host


def test_endpoints_the_lean_client_cannot_serve_fall_back_to_botocore() -> None:
    assert S3Client.from_botocore(_botocore_client(endpoint_url="http://s3:9000/base")) is None
    fips = Config(use_fips_endpoint=True)
    assert S3Client.from_botocore(_botocore_client(region_name="us-east-1", config=fips)) is None
    accelerate = Config(s3={"use_accelerate_endpoint": True})
    assert S3Client.from_botocore(_botocore_client(config=accelerate)) is None


def test_the_proxy_comes_from_the_environment_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("https_proxy", "http://proxy:3128")
    monkeypatch.setenv("no_proxy", "internal.example,.svc")
    assert S3Client("https://s3.amazonaws.com", "us-east-1", None, False)._proxy == (
        "http://proxy:3128"
    )
    assert S3Client("https://minio.svc", "us-east-1", None, True)._proxy is None
    assert S3Client("http://s3.internal.example", "us-east-1", None, True)._proxy is None
