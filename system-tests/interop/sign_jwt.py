"""Signs a JWT with jwcrypto, a JOSE library that is not the project's own.

Usage: sign_jwt.py KEY.pem HEADER_JSON CLAIMS_JSON
Prints the compact serialization. The header's alg (RS256 or ES256) must fit the key.
"""
import json
import sys

from jwcrypto import jwk, jwt


def main() -> None:
    pem_path, header, claims = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
    with open(pem_path, "rb") as f:
        key = jwk.JWK.from_pem(f.read())
    token = jwt.JWT(header=header, claims=claims)
    token.make_signed_token(key)
    print(token.serialize())


if __name__ == "__main__":
    main()
