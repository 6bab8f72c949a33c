"""Interoperability check of the authz-server with implementations that are not ours.

- requests-oauthlib (an OAuth 2.0 client library) obtains a token with the
  client_credentials grant, client_secret_basic, from the endpoint the RFC 8414 metadata names;
- PyJWT (a JOSE library other than the server's jsonwebtoken) validates it against the JWKS
  the metadata names, and every RFC 9068 header and claim is checked;
- every URL in the metadata answers.

Usage: check_authz.py ISSUER CLIENT_ID CLIENT_SECRET AUDIENCE
Prints "interop ok" and exits 0, or raises.
"""

import sys
import time

import jwt
import requests
from oauthlib.oauth2 import BackendApplicationClient
from requests_oauthlib import OAuth2Session


def main(issuer: str, client_id: str, secret: str, audience: str) -> None:
    meta = requests.get(f"{issuer}/.well-known/oauth-authorization-server", timeout=5).json()
    assert meta["issuer"] == issuer, meta
    for key in ("token_endpoint", "jwks_uri", "revocation_endpoint", "introspection_endpoint"):
        assert meta[key].startswith(issuer), (key, meta[key])
    assert requests.get(meta["jwks_uri"], timeout=5).status_code == 200

    session = OAuth2Session(client=BackendApplicationClient(client_id=client_id))
    token = session.fetch_token(
        token_url=meta["token_endpoint"], client_id=client_id, client_secret=secret, timeout=5
    )
    assert token["token_type"].lower() == "bearer", token
    access = token["access_token"]

    header = jwt.get_unverified_header(access)
    assert header["typ"] == "at+jwt", header
    assert header["alg"] in meta["token_signing_alg_values_supported"], header
    assert header.get("kid"), header

    signing_key = jwt.PyJWKClient(meta["jwks_uri"]).get_signing_key_from_jwt(access)
    claims = jwt.decode(
        access,
        signing_key.key,
        algorithms=[header["alg"]],
        audience=audience,
        issuer=issuer,
        options={"require": ["exp", "iat", "nbf", "iss", "aud", "sub", "jti"]},
    )
    # RFC 9068 §2.2.
    assert claims["client_id"] == client_id, claims
    assert claims["sub"] == client_id, claims
    assert isinstance(claims["jti"], str) and claims["jti"], claims
    assert claims["iat"] <= time.time() + 30 < claims["exp"] + 30, claims
    assert set(claims["scope"].split()) <= set(meta["scopes_supported"]), claims

    # The token endpoint's answer per RFC 6749 §5.1 as the library parsed it.
    assert int(token["expires_in"]) > 0, token

    # A tampered token fails the independent verification.
    head, body, sig = access.split(".")
    tampered = f"{head}.{body}.{sig[:-4]}AAAA"
    try:
        jwt.decode(tampered, signing_key.key, algorithms=[header["alg"]], audience=audience)
    except jwt.InvalidSignatureError:
        pass
    else:
        raise AssertionError("a tampered token verified")

    # RFC 7009 and RFC 7662 through plain HTTP, as any client would call them.
    auth = (client_id, secret)
    r = requests.post(meta["introspection_endpoint"], data={"token": access}, auth=auth, timeout=5)
    assert r.status_code == 200 and r.json()["active"] is True, r.text
    r = requests.post(meta["revocation_endpoint"], data={"token": access}, auth=auth, timeout=5)
    assert r.status_code == 200, r.text
    r = requests.post(meta["introspection_endpoint"], data={"token": access}, auth=auth, timeout=5)
    assert r.json() == {"active": False}, r.text
    print("interop ok")


if __name__ == "__main__":
    main(*sys.argv[1:5])
