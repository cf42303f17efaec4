"""SMART Backend Services: an EHR's backend gets an access token without a stored secret.

``POST /oauth/token`` takes the OAuth 2.0 client credentials grant with a
``private_key_jwt`` client assertion (RFC 7523, as SMART profiles it): a JWT the EHR
signs with RS384 or ES384, with iss = sub = its client id, aud = this endpoint's URL,
at most five minutes' life and a jti never used before. Authlib checks the request,
the signature and the claims; ``retention.access.ehr_clients`` holds the clients.

The access token is an ordinary ``ehr`` key (``retention.access.keys``) with the
client's clinics and recipient, expiring after ``smart_token_seconds``: every other
endpoint authenticates, scopes, rate-limits, audits and revokes it like any key.

The audience is built from ``public_base_url``, never from the Host header, which the
caller writes. Without it there is no URL an assertion could be bound to, so the
endpoint answers 404 (problem JSON) saying so: a permanent state of the deployment,
not a 503 an EHR would retry. Refusals are OAuth JSON errors (RFC 6749 section 5.2),
audited as ``oauth.token`` "denied" under the client id the assertion claimed; an issue
is audited as "ok" under the new key's id. Neither the assertion nor the token is
logged. ``GET /fhir/.well-known/smart-configuration`` tells an EHR all of this.
"""

from __future__ import annotations

import json
import logging
from calendar import timegm
from datetime import datetime, timedelta
from typing import Any

from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2 import OAuth2Error, OAuth2Request
from authlib.oauth2.rfc6749 import (
    ClientMixin,
    InvalidClientError,
    InvalidRequestError,
    InvalidScopeError,
)
from authlib.oauth2.rfc6749.grants import ClientCredentialsGrant
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from flask import Blueprint, Flask, Response, current_app, jsonify, request
from joserfc import jws, jwt
from joserfc.errors import BadSignatureError, JoseError
from joserfc.jwk import KeySet

from retention.access import ehr_clients
from retention.access.ehr_clients import EhrClient
from retention.access.keys import check_key
from retention.api.auth import audit, connection, deny_counted, throttle_address
from retention.api.errors import Problem
from retention.api.services import services, services_of, state

log = logging.getLogger(__name__)

bp = Blueprint("oauth", __name__)

TOKEN_PATH = "/oauth/token"
SMART_CONFIGURATION_PATH = "/fhir/.well-known/smart-configuration"
ACTION = "oauth.token"
AUTH_METHOD = "private_key_jwt"
EXTENSION = "retention.oauth"
# An assertion lives at most this long (SMART: "no more than five minutes in the future").
MAX_ASSERTION_SECONDS = 300
# Clock skew allowed between the EHR and this server, for exp, nbf and iat.
LEEWAY_SECONDS = 60


def token_url(public_base_url: str) -> str | None:
    """The token endpoint's absolute URL, the audience assertions must name; None if unset."""
    return public_base_url.rstrip("/") + TOKEN_PATH if public_base_url else None


def register_oauth(app: Flask) -> None:
    """The token endpoint and its authorization server, built once per app."""
    server = SmartAuthorizationServer(query_client=_query_client, save_token=_record_issue)
    server.register_grant(SmartClientCredentials)
    audience = token_url(services_of(app).settings.public_base_url)
    if audience is not None:
        server.register_client_auth_method(AUTH_METHOD, PrivateKeyJwt(audience))
    server.register_token_generator(SmartClientCredentials.GRANT_TYPE, _mint)
    app.extensions[EXTENSION] = server
    app.register_blueprint(bp)


@bp.post(TOKEN_PATH)
def token() -> Response:
    """Exchange a signed client assertion for a short-lived access token."""
    audience = token_url(services().settings.public_base_url)
    if audience is None:
        raise Problem(404, "SMART Backend Services are off: the operator must set "
                      "public_base_url (the URL clients reach this API at), which the "
                      "token endpoint's audience is built from", "Token endpoint not configured")
    # Each request costs a signature check and store reads: counted by address like any
    # request without a known key (sign-ins included).
    throttle_address(ACTION)
    server: SmartAuthorizationServer = current_app.extensions[EXTENSION]
    if request.args:
        return server.handle_error_response(
            server.create_oauth2_request(None), InvalidRequestError(
                description="send the parameters in the form body, not the URL"))
    response: Response = server.create_token_response()
    return response


@bp.get(SMART_CONFIGURATION_PATH)
def smart_configuration() -> Response:
    """SMART discovery: where the token endpoint is and what it accepts."""
    audience = token_url(services().settings.public_base_url)
    if audience is None:
        raise Problem(404, "SMART Backend Services are off: the operator must set "
                      "public_base_url", "SMART configuration not available")
    return jsonify({
        "token_endpoint": audience,
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": [AUTH_METHOD],
        "token_endpoint_auth_signing_alg_values_supported":
            list(ehr_clients.SIGNING_ALGORITHMS),
        "scopes_supported": sorted(ehr_clients.NARROWED_SCOPES),
        "capabilities": ["client-confidential-asymmetric"],
    })


# --- Authlib's view of a registered client ----------------------------------------------


class OAuthClient(ClientMixin):
    """A registered, unrevoked EHR as Authlib asks about it: private_key_jwt and client
    credentials only."""

    def __init__(self, ehr: EhrClient) -> None:
        self.ehr = ehr

    def __repr__(self) -> str:
        return f"OAuthClient({self.ehr.client_id})"

    def get_client_id(self) -> str:
        return self.ehr.client_id

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == AUTH_METHOD and endpoint == "token"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == SmartClientCredentials.GRANT_TYPE

    def get_allowed_scope(self, scope: str) -> str:
        return ehr_clients.granted_scope(scope, self.ehr.scopes)


def _query_client(client_id: str) -> OAuthClient | None:
    found = ehr_clients.find_client(connection(), client_id)
    if found is None:
        return None
    if not found.active:
        log.info("oauth.token: EHR client %s is revoked", client_id)
        return None
    return OAuthClient(found)


class PrivateKeyJwt(JWTBearerClientAssertion):
    """RFC 7523 client authentication as SMART Backend Services profile it.

    Authlib extracts the assertion, finds the client by ``sub`` and verifies the
    signature with the client's registered JWKS; this subclass limits the algorithms to
    RS384 and ES384 (joserfc's default list holds neither), requires a kid, judges time
    by the app's clock, refuses an assertion that lives longer than five minutes, and
    records each jti so it is never accepted twice.
    """

    CLIENT_AUTH_METHOD = AUTH_METHOD

    def __init__(self, audience: str) -> None:
        super().__init__(validate_jti=True, leeway=LEEWAY_SECONDS)
        self.audience = audience

    def get_audiences(self) -> list[str]:
        return [self.audience]

    def resolve_client_public_key(self, client: OAuthClient) -> KeySet:
        return KeySet.import_key_set(client.ehr.jwks)  # type: ignore[arg-type]

    def process_assertion_claims(self, assertion: str, resolve_key: Any) -> dict[str, Any]:
        try:
            decoded = jwt.decode(assertion, resolve_key,
                                 algorithms=list(ehr_clients.SIGNING_ALGORITHMS))
        except (JoseError, ValueError) as exc:
            raise InvalidClientError(description=_description(exc)) from None
        if not decoded.header.get("kid"):
            raise InvalidClientError(description="the assertion's header must name its key "
                                     "(kid)")
        self.verify_claims(decoded.claims)
        return decoded.claims

    def verify_claims(self, claims: dict[str, Any]) -> None:
        now = services().clock.now()
        checks = jwt.JWTClaimsRegistry(
            now=timegm(now.timetuple()), leeway=self.leeway,
            iss={"essential": True}, sub={"essential": True}, jti={"essential": True},
            aud={"essential": True, "values": self.get_audiences()},
            exp={"essential": True})
        try:
            checks.validate(claims)
        except JoseError as exc:
            raise InvalidClientError(description=_description(exc)) from None
        if claims["sub"] != claims["iss"]:
            raise InvalidClientError(description="iss and sub must both be the client id")
        exp = claims["exp"]
        if exp > timegm(now.timetuple()) + MAX_ASSERTION_SECONDS + self.leeway:
            raise InvalidClientError(description="the assertion may expire at most "
                                     f"{MAX_ASSERTION_SECONDS} s after it is sent")
        if not isinstance(claims["jti"], str) or not self.validate_jti(claims, claims["jti"]):
            raise InvalidClientError(description="the assertion's jti was used before")

    def validate_jti(self, claims: dict[str, Any], jti: str) -> bool:
        expires = datetime(1970, 1, 1) + timedelta(seconds=int(claims["exp"]) + self.leeway)
        return ehr_clients.use_jti(connection(), claims["sub"], jti, expires,
                                   services().clock.now())


def _description(exc: Exception) -> str:
    """What joserfc says was wrong, without the token (its messages never quote it)."""
    if isinstance(exc, BadSignatureError):
        return "the signature does not verify with the client's registered keys"
    text = getattr(exc, "description", None) or type(exc).__name__
    return str(text)


# --- the grant ---------------------------------------------------------------------------


class SmartClientCredentials(ClientCredentialsGrant):
    """Client credentials with private_key_jwt only; scopes narrowed to what is served."""

    TOKEN_ENDPOINT_AUTH_METHODS = [AUTH_METHOD]  # noqa: RUF012 (Authlib's class attribute)

    def validate_requested_scope(self) -> None:
        try:
            self.granted = self.client.get_allowed_scope(self.request.payload.scope)
        except ehr_clients.ScopeError as exc:
            raise InvalidScopeError(description=str(exc)) from None

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        # As Authlib's, without its debug line that would log the token.
        token = self.generate_token(scope=self.granted, include_refresh_token=False)
        self.save_token(token)
        return 200, token, self.TOKEN_RESPONSE_HEADER


def _mint(grant_type: str, client: OAuthClient, user: Any = None, scope: str | None = None,
          expires_in: int | None = None, include_refresh_token: bool = False
          ) -> dict[str, Any]:
    """The token response: a new ``ehr`` key for the client, as the access token."""
    found = services()
    seconds = found.settings.smart_token_seconds
    try:
        _, access_token = ehr_clients.issue_token(connection(), client.ehr,
                                                  timedelta(seconds=seconds), found.clock.now())
    except ehr_clients.ClientError as exc:  # revoked while the request was checked
        raise InvalidClientError(description=str(exc)) from None
    return {"access_token": access_token, "token_type": "bearer", "expires_in": seconds,
            "scope": scope}


def _record_issue(token: dict[str, Any], oauth_request: OAuth2Request) -> None:
    """Audit the issue under the new key's id and role, before the token leaves."""
    checked = check_key(connection(), token["access_token"], services().clock.now())
    state().caller = checked.caller
    audit(ACTION, "ok", 200)


class SmartAuthorizationServer(AuthorizationServer):
    """Authlib's Flask authorization server, auditing every refusal before it answers."""

    def handle_error_response(self, oauth_request: OAuth2Request, error: OAuth2Error
                              ) -> Response:
        current = state()
        current.caller = None
        current.claimed_key_id = _claimed_client(oauth_request)
        # The error's code and description only: neither quotes the assertion.
        log.info("oauth.token refused (%s) for client %s: %s", error.error,
                 current.claimed_key_id or "unknown", error.description)
        deny_counted(ACTION, error.status_code, "denied", error.description or error.error,
                     "Token request refused")
        response: Response = super().handle_error_response(oauth_request, error)
        return response


def _claimed_client(oauth_request: OAuth2Request) -> str | None:
    """The client id a refused request claimed (authenticated, or the assertion's sub)."""
    client = getattr(oauth_request, "client", None)
    if isinstance(client, OAuthClient):
        return client.ehr.client_id
    assertion = oauth_request.form.get("client_assertion") if oauth_request.form else None
    if not assertion:
        return None
    try:
        sub = json.loads(jws.extract_compact(assertion.encode()).payload).get("sub")
    except (JoseError, ValueError, AttributeError):
        return None
    return sub if isinstance(sub, str) and ehr_clients.CLIENT_ID_RE.match(sub) else None
