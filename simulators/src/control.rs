//! The control API: a read-only view of every switch's tables, so that tests
//! and operators can compare the network with `wfm.flows`, and the knobs of
//! fault injection.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use wfm_protocol::switch::SwitchErrorCode;

use crate::faults::{FaultError, FaultSettings, FaultUpdate};
use crate::switch::SwitchView;
use crate::{lock, SharedSimulation};

pub fn router(simulation: SharedSimulation) -> Router {
    Router::new()
        .route("/switches", get(list_switches))
        .route("/switches/{switch_id}", get(get_switch))
        .route("/switches/{switch_id}/disconnect", post(disconnect))
        .route("/switches/{switch_id}/connect", post(connect))
        .route("/switches/{switch_id}/fail-next", post(fail_next))
        .route("/faults", get(get_faults).put(put_faults))
        .with_state(simulation)
}

#[derive(Debug, thiserror::Error)]
enum ControlError {
    #[error("no switch `{0}` in the topology")]
    UnknownSwitch(String),
    #[error(transparent)]
    InvalidFaults(#[from] FaultError),
    #[error("invalid request body: {0}")]
    InvalidBody(String),
}

impl From<JsonRejection> for ControlError {
    fn from(rejection: JsonRejection) -> Self {
        ControlError::InvalidBody(rejection.body_text())
    }
}

#[derive(Serialize)]
struct ErrorBody {
    error: String,
}

impl IntoResponse for ControlError {
    fn into_response(self) -> Response {
        let status = match self {
            ControlError::UnknownSwitch(_) => StatusCode::NOT_FOUND,
            ControlError::InvalidFaults(_) | ControlError::InvalidBody(_) => {
                StatusCode::BAD_REQUEST
            }
        };
        let body = ErrorBody {
            error: self.to_string(),
        };
        (status, Json(body)).into_response()
    }
}

async fn list_switches(State(simulation): State<SharedSimulation>) -> Json<Vec<SwitchView>> {
    let simulation = lock(&simulation);
    Json(
        simulation
            .network
            .sorted()
            .into_iter()
            .map(|switch| simulation.view(switch))
            .collect(),
    )
}

async fn get_switch(
    State(simulation): State<SharedSimulation>,
    Path(switch_id): Path<String>,
) -> Result<Json<SwitchView>, ControlError> {
    let simulation = lock(&simulation);
    let switch = simulation
        .network
        .get(&switch_id)
        .ok_or(ControlError::UnknownSwitch(switch_id))?;
    Ok(Json(simulation.view(switch)))
}

async fn disconnect(
    state: State<SharedSimulation>,
    path: Path<String>,
) -> Result<Json<SwitchView>, ControlError> {
    set_connected(state, path, false)
}

async fn connect(
    state: State<SharedSimulation>,
    path: Path<String>,
) -> Result<Json<SwitchView>, ControlError> {
    set_connected(state, path, true)
}

fn set_connected(
    State(simulation): State<SharedSimulation>,
    Path(switch_id): Path<String>,
    connected: bool,
) -> Result<Json<SwitchView>, ControlError> {
    let mut simulation = lock(&simulation);
    if simulation.network.get(&switch_id).is_none() {
        return Err(ControlError::UnknownSwitch(switch_id));
    }
    simulation.faults.set_connected(&switch_id, connected);
    tracing::info!(%switch_id, connected, "switch connection changed");
    Ok(Json(simulation.view(
        simulation.network.get(&switch_id).expect("checked above"),
    )))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FailNext {
    count: u32,
    #[serde(default)]
    code: SwitchErrorCode,
}

async fn fail_next(
    State(simulation): State<SharedSimulation>,
    Path(switch_id): Path<String>,
    body: Result<Json<FailNext>, JsonRejection>,
) -> Result<Json<SwitchView>, ControlError> {
    let Json(FailNext { count, code }) = body?;
    let mut simulation = lock(&simulation);
    if simulation.network.get(&switch_id).is_none() {
        return Err(ControlError::UnknownSwitch(switch_id));
    }
    simulation.faults.fail_next(&switch_id, count, code);
    tracing::info!(%switch_id, count, %code, "next commands will fail");
    Ok(Json(simulation.view(
        simulation.network.get(&switch_id).expect("checked above"),
    )))
}

async fn get_faults(State(simulation): State<SharedSimulation>) -> Json<FaultSettings> {
    Json(lock(&simulation).faults.settings().clone())
}

async fn put_faults(
    State(simulation): State<SharedSimulation>,
    body: Result<Json<FaultUpdate>, JsonRejection>,
) -> Result<Json<FaultSettings>, ControlError> {
    let Json(update) = body?;
    let mut simulation = lock(&simulation);
    let settings = simulation.faults.update(update)?.clone();
    tracing::info!(?settings, "fault settings changed");
    Ok(Json(settings))
}
