//! The optional bearer token of the operator endpoints (`/metrics`, the
//! status API). `/health` and `/health/*` stay open: load balancers,
//! systemd and the health monitor's first probe carry no secret, and they
//! tell nothing about any miner.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use subtle::ConstantTimeEq;

/// Requires `Authorization: Bearer <token>` on every path but the health
/// checks, when `token` is set.
pub(crate) fn protect(router: Router, token: Option<&str>) -> Router {
    match token {
        Some(token) => {
            let token: Arc<[u8]> = token.as_bytes().into();
            router.layer(axum::middleware::from_fn_with_state(token, require_token))
        }
        None => router,
    }
}

/// Paths anyone may read.
fn is_open(path: &str) -> bool {
    path == "/health" || path.starts_with("/health/")
}

async fn require_token(State(token): State<Arc<[u8]>>, request: Request, next: Next) -> Response {
    if is_open(request.uri().path()) {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(bearer);
    match presented {
        // Constant time: the comparison must not tell how much of a
        // guess was right.
        Some(presented) if bool::from(presented.as_bytes().ct_eq(&token)) => {
            next.run(request).await
        }
        Some(_) => refuse("wrong bearer token"),
        None => refuse("this endpoint needs Authorization: Bearer <metrics.token>"),
    }
}

/// The credentials of `Bearer <token>` (the scheme is case-insensitive,
/// RFC 7235).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, credentials) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| credentials.trim())
}

fn refuse(why: &str) -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer realm=\"tbg\"")],
        axum::Json(serde_json::json!({ "error": why })),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_credentials_are_read_case_insensitively() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer"), None);
    }

    #[test]
    fn only_health_checks_are_open() {
        assert!(is_open("/health"));
        assert!(is_open("/health/live"));
        assert!(!is_open("/healthz"));
        assert!(!is_open("/metrics"));
        assert!(!is_open("/status/users/x"));
    }
}
