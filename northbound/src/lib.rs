//! The northbound REST API: turns calls into hub commands on Kafka, waits
//! for the hub's first answer, and serves reads from materialized views.

pub mod config;
pub mod errors;
pub mod inspect;
pub mod metrics;
mod middleware;
pub mod model;
pub mod openapi;
pub mod pending;
pub mod routes;
pub mod tail;
pub mod validation;
pub mod views;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, info, info_span, Instrument as _};
use wfm_protocol::hub::HubMessage;
use wfm_protocol::northbound::NorthboundReply;
use wfm_protocol::resources::ReplyTo;
use wfm_protocol::{Envelope, Topic};
use wfm_runtime::{Outgoing, Service};

pub use config::NorthboundConfig;
pub use errors::ApiError;
pub use inspect::InspectSources;

use crate::pending::Pending;
use crate::tail::{StartAt, Tail};
use crate::views::Views;

pub const SOURCE: &str = "northbound";

/// How often broker reachability is probed for `/ready` and for failing fast with 503.
const BROKER_PROBE_INTERVAL: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct AppState {
    config: Arc<NorthboundConfig>,
    service: Service,
    views: Views,
    pending: Pending,
    replies_listening: Arc<AtomicBool>,
    broker_reachable: Arc<AtomicBool>,
    in_flight: Arc<Semaphore>,
    metrics: metrics::HttpMetrics,
    sources: InspectSources,
}

impl AppState {
    fn in_flight(&self) -> usize {
        self.config.max_in_flight - self.in_flight.available_permits()
    }

    /// Sends a hub command and waits for its first answer. The waiter is
    /// registered before sending, and dropped (entry removed) on every exit.
    async fn submit(
        &self,
        flow_id: &str,
        command: impl FnOnce(String, ReplyTo) -> HubMessage,
    ) -> Result<NorthboundReply, ApiError> {
        if !self.broker_reachable.load(Ordering::Acquire) {
            return Err(ApiError::BrokerUnavailable(format!(
                "{} did not answer the last probe",
                self.service.kafka.brokers
            )));
        }
        let correlation_id = errors::current_correlation_id();
        // A fresh request id per call: a client reusing a correlation id must
        // not have its second request taken by the hub for a redelivery of the first.
        let request_id = uuid::Uuid::now_v7().to_string();
        let span = info_span!("hub_request", %correlation_id, flow_id, %request_id);
        async {
            let topics = self.service.kafka.topics();
            let reply_to = ReplyTo {
                topic: topics.name(Topic::Northbound),
                key: correlation_id.clone(),
            };
            let message = command(request_id.clone(), reply_to);
            let envelope = Envelope::new(&message, SOURCE, &correlation_id)
                .map_err(|e| ApiError::Internal(e.to_string()))?;
            let out = Outgoing::envelope(topics.name(Topic::Hub), flow_id, &envelope);
            let waiter = self.pending.register(&request_id);
            let timeout = Duration::from_millis(self.config.request_timeout_ms);
            let started = tokio::time::Instant::now();
            match tokio::time::timeout(timeout, self.service.producer.send(&out)).await {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => return Err(ApiError::BrokerUnavailable(error.to_string())),
                Err(_) => {
                    return Err(ApiError::BrokerUnavailable(format!(
                        "the command was not acknowledged within {timeout:?}"
                    )))
                }
            }
            debug!("command sent to the hub");
            let reply = waiter
                .wait(timeout.saturating_sub(started.elapsed()))
                .await
                .ok_or(ApiError::Timeout(timeout))?;
            info!(reply = reply_kind(&reply), "hub answered");
            Ok(reply)
        }
        .instrument(span)
        .await
    }
}

fn reply_kind(reply: &NorthboundReply) -> &'static str {
    match reply {
        NorthboundReply::RequestAccepted { .. } => "accepted",
        NorthboundReply::RequestRejected { .. } => "rejected",
        NorthboundReply::RequestFinished { .. } => "finished",
    }
}

/// Serves the API on `config.http_addr` until the service's shutdown.
pub async fn run(
    service: Service,
    config: NorthboundConfig,
    sources: InspectSources,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(config.http_addr)
        .await
        .with_context(|| format!("binding the northbound API to {}", config.http_addr))?;
    serve(service, config, sources, listener).await
}

/// Serves the API on an already bound listener until the service's shutdown.
pub async fn serve(
    service: Service,
    config: NorthboundConfig,
    sources: InspectSources,
    listener: TcpListener,
) -> anyhow::Result<()> {
    let views = Views::new(config.max_history_per_flow, service.kafka.max_record_bytes);
    let state = AppState {
        in_flight: Arc::new(Semaphore::new(config.max_in_flight)),
        config: Arc::new(config),
        views: views.clone(),
        pending: Pending::default(),
        replies_listening: Arc::default(),
        broker_reachable: Arc::default(),
        metrics: Default::default(),
        sources,
        service: service.clone(),
    };
    let mut tasks = tokio::task::JoinSet::new();
    spawn_tails(&mut tasks, &state);
    tasks.spawn(probe_broker(state.clone()));
    let app = routes::router(state);
    info!(addr = %listener.local_addr()?, "northbound API listening");
    let shutdown = service.shutdown.clone();
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    service.shutdown.cancel();
    tasks.shutdown().await;
    served.context("serving the northbound API")
}

/// Folds one record of a topic into the views.
type ApplyRecord = fn(&Views, &str, Option<&[u8]>);

fn spawn_tails(tasks: &mut tokio::task::JoinSet<()>, state: &AppState) {
    let service = &state.service;
    let views = &state.views;
    let feeds: [(Topic, StartAt, Arc<AtomicBool>, ApplyRecord); 3] = [
        (
            Topic::Flows,
            StartAt::Beginning,
            views.flows_caught_up.clone(),
            Views::apply_flow,
        ),
        (
            Topic::Topology,
            StartAt::Beginning,
            views.topology_caught_up.clone(),
            Views::apply_topology,
        ),
        (
            Topic::History,
            StartAt::Beginning,
            views.history_caught_up.clone(),
            Views::apply_history,
        ),
    ];
    for (topic, start, caught_up, apply) in feeds {
        let tail = Tail {
            topic,
            start,
            caught_up,
        };
        let (service, views) = (service.clone(), views.clone());
        tasks.spawn(async move {
            tail.run(
                service.kafka,
                &service.registry,
                service.shutdown,
                |key, value| apply(&views, key, value),
            )
            .await
        });
    }
    let tail = Tail {
        topic: Topic::Northbound,
        start: StartAt::End,
        caught_up: state.replies_listening.clone(),
    };
    let (service, pending) = (service.clone(), state.pending.clone());
    let max_bytes = service.kafka.max_record_bytes;
    tasks.spawn(async move {
        tail.run(
            service.kafka,
            &service.registry,
            service.shutdown,
            |key, value| {
                let reply = value
                    .and_then(|v| Envelope::decode(v, max_bytes).ok())
                    .and_then(|e| e.open::<NorthboundReply>().ok());
                match reply {
                    Some(reply) => {
                        pending.deliver(reply);
                    }
                    None => tracing::warn!(key, "unreadable reply on the northbound topic"),
                }
            },
        )
        .await
    });
}

async fn probe_broker(state: AppState) {
    let mut interval = tokio::time::interval(BROKER_PROBE_INTERVAL);
    loop {
        interval.tick().await;
        let probe = tokio::time::timeout(
            BROKER_PROBE_INTERVAL * 3,
            wfm_runtime::admin::metadata(&state.service.kafka, Duration::ZERO),
        )
        .await;
        let reachable = matches!(probe, Ok(Ok(_)));
        if state.broker_reachable.swap(reachable, Ordering::AcqRel) != reachable {
            info!(reachable, "broker reachability changed");
        }
    }
}
