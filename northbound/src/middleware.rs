//! What wraps every request: the correlation id (taken or generated, echoed,
//! in scope for errors and logs), bearer-token authentication of mutations,
//! the in-flight cap, and request metrics.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::{info_span, Instrument as _};

use crate::errors::{ApiError, CORRELATION_ID};
use crate::AppState;

pub const CORRELATION_HEADER: HeaderName = HeaderName::from_static("correlation_id");
const MAX_CORRELATION_ID_LEN: usize = 128;

/// Probes and scrapes stay answerable when the API is saturated.
const UNCAPPED: [&str; 3] = ["/health", "/ready", "/metrics"];

fn correlation_id(request: &Request) -> String {
    request
        .headers()
        .get(&CORRELATION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|id| {
            !id.is_empty()
                && id.len() <= MAX_CORRELATION_ID_LEN
                && id.bytes().all(|b| b.is_ascii_graphic())
        })
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string())
}

fn is_mutation(method: &Method) -> bool {
    matches!(
        *method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    )
}

/// Compares without an early exit, so response time does not reveal how much of a token matched.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn authorized(state: &AppState, request: &Request) -> bool {
    let tokens = &state.config.auth_tokens;
    if tokens.is_empty() || !is_mutation(request.method()) {
        return true;
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    presented.is_some_and(|p| {
        tokens
            .iter()
            .any(|t| same_secret(t.as_bytes(), p.as_bytes()))
    })
}

pub async fn serve(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = correlation_id(&request);
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let span = info_span!("http", correlation_id = %id, %method, %route);
    let handle = async {
        if !authorized(&state, &request) {
            return ApiError::Unauthorized.into_response();
        }
        let _permit = if UNCAPPED.contains(&route.as_str()) {
            None
        } else {
            match state.in_flight.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    return ApiError::Overloaded(format!(
                        "{} requests in flight; try again later",
                        state.config.max_in_flight
                    ))
                    .into_response()
                }
            }
        };
        next.run(request).await
    };
    let mut response = CORRELATION_ID
        .scope(id.clone(), handle)
        .instrument(span)
        .await;
    let status = response.status();
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&id) {
        headers.insert(CORRELATION_HEADER, value);
    }
    if status == StatusCode::SERVICE_UNAVAILABLE {
        headers.insert(
            header::RETRY_AFTER,
            HeaderValue::from(state.config.retry_after_s),
        );
    }
    state
        .metrics
        .observe(method.as_str(), &route, status.as_u16(), started.elapsed());
    response
}
