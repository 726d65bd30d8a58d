//! The handlers. Reads come from the views; mutations are validated here,
//! then sent to the hub, and answered with the hub's first reply.

use std::sync::atomic::Ordering;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::routing::{get, MethodRouter};
use axum::{Json, Router};
use wfm_protocol::flow::FlowSpec;
use wfm_protocol::hub::{CreateFlowRequest, DeleteFlowRequest, HubMessage};
use wfm_protocol::northbound::NorthboundReply;

use crate::errors::{ApiError, MessageError};
use crate::model::{
    FlowHistoryResponse, FlowPathResponse, FlowResponse, HealthResponse, HistoryEventBody,
    HistoryQuery, InspectResponse, LinkResponse, ListQuery, NorthboundInspect, ReadyResponse,
    SwitchResponse,
};
use crate::validation::{self, ValidationError};
use crate::{middleware, AppState};

/// Every served route; the router is built from this list and the OpenAPI
/// document is checked against it.
pub fn routes() -> Vec<(&'static str, MethodRouter<AppState>)> {
    vec![
        ("/v2/flows", get(list_flows).post(create_flow)),
        ("/v2/flows/{flow_id}", get(get_flow).delete(delete_flow)),
        ("/v2/flows/{flow_id}/path", get(flow_path)),
        ("/v2/flows/{flow_id}/history", get(flow_history)),
        ("/v2/switches", get(list_switches)),
        ("/v2/links", get(list_links)),
        ("/v2/inspect", get(inspect)),
        ("/health", get(health)),
        ("/ready", get(ready)),
        ("/metrics", get(metrics)),
        ("/openapi.json", get(openapi)),
    ]
}

pub fn router(state: AppState) -> Router {
    let body_limit = state.config.max_body_bytes;
    routes()
        .into_iter()
        .fold(Router::new(), |router, (path, handler)| {
            router.route(path, handler)
        })
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::serve,
        ))
        .with_state(state)
}

type ApiResult<T> = Result<Json<T>, ApiError>;

fn body_error(rejection: BytesRejection, limit: usize) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::BodyTooLarge { limit }
    } else {
        ValidationError::Body(rejection.body_text()).into()
    }
}

fn flow_id(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(flow_id) = path.map_err(|e| ValidationError::Body(e.body_text()))?;
    validation::validate_flow_id(&flow_id)?;
    Ok(flow_id)
}

fn query<T>(query: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    query
        .map(|Query(q)| q)
        .map_err(|e| ValidationError::Query(e.body_text()).into())
}

/// 404 for an endpoint on a switch or port the topology does not have, so
/// that such a request never reaches the hub. Skipped until the topology
/// view is complete: the hub checks again either way.
fn check_endpoints(state: &AppState, spec: &FlowSpec) -> Result<(), ApiError> {
    if !state.views.topology_caught_up.load(Ordering::Acquire) {
        return Ok(());
    }
    for (side, endpoint) in [("source", &spec.source), ("destination", &spec.destination)] {
        let switch = state.views.switch(&endpoint.switch_id).ok_or_else(|| {
            ApiError::NotFound(format!(
                "{side} switch {} does not exist",
                endpoint.switch_id
            ))
        })?;
        if !switch.ports.contains(&endpoint.port_number) {
            return Err(ApiError::NotFound(format!(
                "{side} switch {} has no port {}",
                endpoint.switch_id, endpoint.port_number
            )));
        }
    }
    Ok(())
}

/// The HTTP answer to the hub's first reply.
fn answer(state: &AppState, flow_id: &str, reply: NorthboundReply) -> ApiResult<FlowResponse> {
    match reply {
        NorthboundReply::RequestAccepted { flow, .. } => Ok(Json((&flow).into())),
        NorthboundReply::RequestRejected { error, .. } => Err(error.into()),
        NorthboundReply::RequestFinished {
            succeeded: true,
            flow,
            ..
        } => flow
            .or_else(|| state.views.flow(flow_id))
            .map(|flow| Json((&flow).into()))
            .ok_or_else(|| ApiError::NotFound(format!("flow {flow_id} no longer exists"))),
        NorthboundReply::RequestFinished { message, .. } => Err(ApiError::Internal(message)),
    }
}

/// Create a flow.
///
/// Answers once the hub has validated the flow and allocated its path, with the
/// flow `IN_PROGRESS`; follow it with `GET /v2/flows/{flow_id}`.
#[utoipa::path(post, path = "/v2/flows", tag = "flows",
    request_body = crate::model::FlowRequest,
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "Accepted; the flow is being installed", body = FlowResponse),
        (status = 400, description = "Invalid request", body = MessageError),
        (status = 401, description = "Missing or wrong bearer token", body = MessageError),
        (status = 404, description = "Unknown switch or port, or no path", body = MessageError),
        (status = 408, description = "The hub did not answer in time", body = MessageError),
        (status = 409, description = "The flow exists or is busy", body = MessageError),
        (status = 413, description = "Body too large", body = MessageError),
        (status = 503, description = "Overloaded or broker unreachable; see Retry-After", body = MessageError),
    ))]
pub(crate) async fn create_flow(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<FlowResponse> {
    let body = body.map_err(|e| body_error(e, state.config.max_body_bytes))?;
    let spec = validation::parse_flow(&body)?;
    check_endpoints(&state, &spec)?;
    let flow_id = spec.flow_id.clone();
    let reply = state
        .submit(&flow_id, |request_id, reply_to| {
            HubMessage::CreateFlow(CreateFlowRequest {
                request_id,
                flow: spec,
                reply_to,
            })
        })
        .await?;
    answer(&state, &flow_id, reply)
}

/// Delete a flow.
///
/// Answers once the hub has accepted the deletion; the flow disappears from
/// `GET /v2/flows/{flow_id}` when its rules are removed.
#[utoipa::path(delete, path = "/v2/flows/{flow_id}", tag = "flows",
    params(("flow_id" = String, Path, description = "Flow id")),
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "Deletion accepted", body = FlowResponse),
        (status = 400, description = "Invalid flow id", body = MessageError),
        (status = 401, description = "Missing or wrong bearer token", body = MessageError),
        (status = 404, description = "Unknown flow", body = MessageError),
        (status = 408, description = "The hub did not answer in time", body = MessageError),
        (status = 409, description = "The flow is busy", body = MessageError),
        (status = 503, description = "Overloaded or broker unreachable; see Retry-After", body = MessageError),
    ))]
pub(crate) async fn delete_flow(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<FlowResponse> {
    let flow_id = flow_id(path)?;
    let reply = state
        .submit(&flow_id, |request_id, reply_to| {
            HubMessage::DeleteFlow(DeleteFlowRequest {
                request_id,
                flow_id: flow_id.clone(),
                reply_to,
            })
        })
        .await?;
    answer(&state, &flow_id, reply)
}

/// List flows, optionally only those with one status.
#[utoipa::path(get, path = "/v2/flows", tag = "flows", params(ListQuery),
    responses(
        (status = 200, description = "Flows, by id", body = Vec<FlowResponse>),
        (status = 400, description = "Invalid query", body = MessageError),
    ))]
pub(crate) async fn list_flows(
    State(state): State<AppState>,
    params: Result<Query<ListQuery>, QueryRejection>,
) -> ApiResult<Vec<FlowResponse>> {
    let wanted = query(params)?.status;
    let flows = state
        .views
        .flows(|f| wanted.is_none_or(|status| status == f.status.into()));
    Ok(Json(flows.iter().map(FlowResponse::from).collect()))
}

fn known_flow(state: &AppState, flow_id: &str) -> Result<wfm_protocol::flow::FlowRecord, ApiError> {
    state
        .views
        .flow(flow_id)
        .ok_or_else(|| ApiError::NotFound(format!("flow {flow_id} does not exist")))
}

/// One flow.
#[utoipa::path(get, path = "/v2/flows/{flow_id}", tag = "flows",
    params(("flow_id" = String, Path, description = "Flow id")),
    responses(
        (status = 200, description = "The flow", body = FlowResponse),
        (status = 400, description = "Invalid flow id", body = MessageError),
        (status = 404, description = "Unknown flow", body = MessageError),
    ))]
pub(crate) async fn get_flow(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<FlowResponse> {
    let flow_id = flow_id(path)?;
    Ok(Json((&known_flow(&state, &flow_id)?).into()))
}

/// A flow's path in both directions.
#[utoipa::path(get, path = "/v2/flows/{flow_id}/path", tag = "flows",
    params(("flow_id" = String, Path, description = "Flow id")),
    responses(
        (status = 200, description = "The path; empty for a one-switch flow", body = FlowPathResponse),
        (status = 400, description = "Invalid flow id", body = MessageError),
        (status = 404, description = "Unknown flow", body = MessageError),
    ))]
pub(crate) async fn flow_path(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<FlowPathResponse> {
    let flow_id = flow_id(path)?;
    let flow = known_flow(&state, &flow_id)?;
    Ok(Json(FlowPathResponse::new(&flow_id, flow.path.as_ref())))
}

/// A flow's history (also after it was deleted), oldest event first.
#[utoipa::path(get, path = "/v2/flows/{flow_id}/history", tag = "flows",
    params(("flow_id" = String, Path, description = "Flow id"), HistoryQuery),
    responses(
        (status = 200, description = "The latest `max_count` events of the window", body = FlowHistoryResponse),
        (status = 400, description = "Invalid flow id or query", body = MessageError),
        (status = 404, description = "No history for this flow", body = MessageError),
    ))]
pub(crate) async fn flow_history(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    params: Result<Query<HistoryQuery>, QueryRejection>,
) -> ApiResult<FlowHistoryResponse> {
    let flow_id = flow_id(path)?;
    let q = query(params)?;
    let (from, to, max_count) = validation::history_window(q.time_from, q.time_to, q.max_count)?;
    let events = state
        .views
        .history(&flow_id, from, to, max_count)
        .ok_or_else(|| ApiError::NotFound(format!("flow {flow_id} has no history")))?;
    Ok(Json(FlowHistoryResponse {
        events: events.iter().map(HistoryEventBody::from).collect(),
        flow_id,
    }))
}

/// Every switch of the topology.
#[utoipa::path(get, path = "/v2/switches", tag = "topology",
    responses((status = 200, description = "Switches, by id", body = Vec<SwitchResponse>)))]
pub(crate) async fn list_switches(State(state): State<AppState>) -> Json<Vec<SwitchResponse>> {
    Json(
        state
            .views
            .switches()
            .iter()
            .map(SwitchResponse::from)
            .collect(),
    )
}

/// Every inter-switch link, one entry per direction.
#[utoipa::path(get, path = "/v2/links", tag = "topology",
    responses((status = 200, description = "Links, by id", body = Vec<LinkResponse>)))]
pub(crate) async fn list_links(State(state): State<AppState>) -> Json<Vec<LinkResponse>> {
    Json(state.views.links().iter().map(LinkResponse::from).collect())
}

/// Requests in flight in the hub, consumer states, coordinator counts, this API's own state.
#[utoipa::path(get, path = "/v2/inspect", tag = "operations",
    responses((status = 200, description = "Inspection snapshot", body = InspectResponse)))]
pub(crate) async fn inspect(State(state): State<AppState>) -> Json<InspectResponse> {
    let (flows, switches, links) = state.views.sizes();
    let consumers = serde_json::to_value(state.service.registry.snapshots()).unwrap_or_default();
    Json(InspectResponse {
        hub: state.sources.hub(&state.service.kafka).await,
        coordinator: state.sources.coordinator(),
        speaker: state.sources.speaker(),
        consumers,
        northbound: NorthboundInspect {
            pending: state.pending.len(),
            in_flight: state.in_flight(),
            flows,
            switches,
            links,
        },
    })
}

/// Liveness: the process serves HTTP.
#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, description = "Alive", body = HealthResponse)))]
pub(crate) async fn health() -> Json<HealthResponse> {
    Json(HealthResponse {
        status: "ok".into(),
    })
}

/// Readiness: the broker answers and every view has caught up.
#[utoipa::path(get, path = "/ready", tag = "operations",
    responses(
        (status = 200, description = "Ready", body = ReadyResponse),
        (status = 503, description = "Not ready; the body says why", body = ReadyResponse),
    ))]
pub(crate) async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    let flag = |f: &std::sync::atomic::AtomicBool| f.load(Ordering::Acquire);
    let views = &state.views;
    let mut body = ReadyResponse {
        ready: false,
        broker_reachable: flag(&state.broker_reachable),
        flows_caught_up: flag(&views.flows_caught_up),
        topology_caught_up: flag(&views.topology_caught_up),
        history_caught_up: flag(&views.history_caught_up),
        replies_listening: flag(&state.replies_listening),
    };
    body.ready = body.broker_reachable && views.caught_up() && body.replies_listening;
    let status = if body.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}

/// Prometheus metrics: HTTP requests by route and status, in flight, pending, consumers.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
pub(crate) async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let mut text = state.metrics.render(state.in_flight(), state.pending.len());
    text.push_str(&state.service.registry.render_prometheus());
    if let Some(stats) = &state.sources.coordinator {
        text.push_str(&stats.render_prometheus());
    }
    if let Some(hub) = &state.sources.hub {
        text.push_str(&hub.render_prometheus());
    }
    if let Some(speaker) = &state.sources.speaker {
        text.push_str(&speaker.render_prometheus());
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        text,
    )
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json")))]
pub(crate) async fn openapi() -> impl IntoResponse {
    Json(crate::openapi::document())
}

async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::NoRoute(format!("{method} {}", uri.path()))
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
