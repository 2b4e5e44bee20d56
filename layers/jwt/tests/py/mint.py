"""Mint JWTs with PyJWT, an implementation independent of the Rust crate.

Reads a JSON request on stdin: {"claims": {...}}. Generates fresh keys
(RSA-2048, EC P-256, Ed25519, an HMAC secret), signs the claims with each,
and prints JSON: for every algorithm its token, public key PEM (or secret),
and a JWKS document holding the public keys under kids.
"""
import json
import sys

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

req = json.load(sys.stdin)
claims = req["claims"]

def pub_pem(private):
    return private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()

out = {}
jwks = {"keys": []}

rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ec_key = ec.generate_private_key(ec.SECP256R1())
ed_key = ed25519.Ed25519PrivateKey.generate()
secret = "py-shared-secret-0123456789abcdef0123456789"

for alg, key, kid, to_jwk in [
    ("RS256", rsa_key, "py-rsa", RSAAlgorithm.to_jwk),
    ("PS256", rsa_key, "py-rsa", RSAAlgorithm.to_jwk),
    ("ES256", ec_key, "py-ec", ECAlgorithm.to_jwk),
    ("EdDSA", ed_key, "py-ed", OKPAlgorithm.to_jwk),
]:
    out[alg] = {
        "token": jwt.encode(claims, key, algorithm=alg, headers={"kid": kid}),
        "public_pem": pub_pem(key),
        "kid": kid,
    }
    jwk = json.loads(to_jwk(key.public_key()))
    jwk["kid"] = kid
    jwk["use"] = "sig"
    if alg != "PS256" and all(k["kid"] != kid for k in jwks["keys"]):
        jwk["alg"] = alg
        jwks["keys"].append(jwk)

out["HS256"] = {"token": jwt.encode(claims, secret, algorithm="HS256"), "secret": secret}
out["jwks"] = jwks
out["pyjwt_version"] = jwt.__version__
print(json.dumps(out))
