"""`[auth.jwt]` through the Python ADBC driver: an identity provider's token as the bearer token
(`adbc.flight.sql.authorization_header`) and as the password of a basic login, as BI tools send
it; forged, expired and scenario-swapping tokens refused while the server keeps serving.

The provider is simulated here: an ES256 key pair made with `cryptography`, tokens signed with
PyJWT. lakegate only ever sees the public key.
"""

import base64
import hashlib
import hmac
import json
import subprocess
import time

import adbc_driver_flightsql.dbapi as flightsql
import adbc_driver_manager
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from test_adbc import BIN, SCENARIO_HEADER, scalar, start, stop

SQL = "SELECT count(*) FROM market.enterprises"
ISSUER = "https://idp.example"


def _pem(key):
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.fixture(scope="module")
def idp(tmp_path_factory):
    """Serves a demo lake that trusts one provider's key; yields (uri, signing key, public pem)."""
    demo = tmp_path_factory.mktemp("jwt") / "demo"
    subprocess.run(
        [str(BIN), "demo", "--dir", str(demo), "--rows", "200", "--build-only"],
        check=True,
        capture_output=True,
        timeout=600,
    )
    key = ec.generate_private_key(ec.SECP256R1())
    (demo / "idp.pem").write_bytes(_pem(key))
    with open(demo / "lakegate.toml", "a") as f:
        f.write(
            f'\n[auth.jwt]\nissuer = "{ISSUER}"\naudience = "lakegate"\n'
            'public_key = "idp.pem"\nalgorithm = "ES256"\nscenario_claim = "scenario"\n'
        )
    proc, address = start(["serve", "--config", str(demo / "lakegate.toml"), "--listen", "127.0.0.1:0"])
    try:
        yield f"grpc://{address}", key, _pem(key)
    finally:
        stop(proc)


def token(key, sub="banker", aud="lakegate", exp_in=300, scenario="bank-credit", alg="ES256"):
    claims = {"iss": ISSUER, "aud": aud, "sub": sub, "exp": int(time.time()) + exp_in}
    if scenario:
        claims["scenario"] = scenario
    return jwt.encode(claims, key, algorithm=alg)


def _b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims():
    claims = {"iss": ISSUER, "aud": "lakegate", "sub": "regulator", "exp": int(time.time()) + 300}
    return _b64(json.dumps(claims).encode())


def hs256(pem):
    """Algorithm confusion: an HMAC token keyed with the provider's public key (PyJWT refuses
    to make one, so it is signed by hand)."""
    body = _b64(b'{"alg":"HS256","typ":"JWT"}') + "." + _claims()
    return body + "." + _b64(hmac.new(pem, body.encode(), hashlib.sha256).digest())


def unsigned():
    return _b64(b'{"alg":"none","typ":"JWT"}') + "." + _claims() + "."


def bearer(uri, tok, extra=None):
    kwargs = {"adbc.flight.sql.authorization_header": f"Bearer {tok}"}
    kwargs.update(extra or {})
    return flightsql.connect(uri, db_kwargs=kwargs, autocommit=True)


def test_a_bearer_token_names_user_and_scenario(idp):
    uri, key, _ = idp
    with bearer(uri, token(key)) as conn:
        assert scalar(conn, SQL) == 200


def test_a_token_is_the_password_of_its_own_user(idp):
    uri, key, _ = idp
    db = {"username": "banker", "password": token(key)}
    with flightsql.connect(uri, db_kwargs=db, autocommit=True) as conn:
        assert scalar(conn, SQL) == 200
    with pytest.raises(adbc_driver_manager.Error, match="not the user logging in"):
        db = {"username": "officer", "password": token(key)}
        with flightsql.connect(uri, db_kwargs=db, autocommit=True) as conn:
            scalar(conn, SQL)


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda key, pem: token(key, exp_in=-3600), id="expired"),
        pytest.param(lambda key, pem: token(key, aud="another-service"), id="audience"),
        pytest.param(
            lambda key, pem: token(ec.generate_private_key(ec.SECP256R1())), id="other-key"
        ),
        pytest.param(lambda key, pem: token(key)[:-4] + "AAAA", id="tampered"),
        pytest.param(lambda key, pem: hs256(pem), id="hs256-keyed-with-public-key"),
        pytest.param(lambda key, pem: unsigned(), id="alg-none"),
    ],
)
def test_forged_tokens_are_refused_and_the_server_keeps_serving(idp, make):
    uri, key, pem = idp
    with pytest.raises(adbc_driver_manager.Error, match="token is not accepted"):
        with bearer(uri, make(key, pem)) as conn:
            scalar(conn, SQL)
    with bearer(uri, token(key)) as conn:
        assert scalar(conn, SQL) == 200


def test_the_scenario_a_token_names_cannot_be_swapped(idp):
    uri, key, _ = idp
    swap = {SCENARIO_HEADER: "insurance-underwriting"}
    with pytest.raises(adbc_driver_manager.Error, match="binds scenario"):
        with bearer(uri, token(key), swap) as conn:
            scalar(conn, SQL)
