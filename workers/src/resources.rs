//! The resource manager's consumer: allocate and deallocate requests from
//! the single-partition `wfm.resources` inbox, answered to the requester and
//! recorded in the `wfm.resources.state` changelog.
//!
//! Crash safety: the changelog record of an allocation is produced before the
//! reply and both are acknowledged before the request's offset is committed.
//! A request redelivered after a crash finds its allocation restored from the
//! changelog and is answered with it again, so nothing is booked twice.

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, info_span, warn};
use wfm_protocol::resources::{
    Allocated, AllocationFailed, Deallocated, ReplyTo, ResourcesCommand, ResourcesReply,
};
use wfm_protocol::{ids, Envelope, Topic};
use wfm_runtime::{Context, Delivery, Handler, Outgoing, TopicPartition, WfmError};

use crate::allocator::{Allocation, Allocator, Booking};
use crate::network::SharedNetwork;

pub const SOURCE: &str = "resources";

/// A record of the `wfm.resources.state` changelog, keyed by flow id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "payload", rename_all = "snake_case")]
pub enum ResourcesState {
    Allocation(Allocation),
}

pub struct ResourcesHandler {
    network: SharedNetwork,
    allocator: Allocator,
    topology_patience: Duration,
}

impl ResourcesHandler {
    pub fn new(network: SharedNetwork, topology_patience: Duration) -> Self {
        Self {
            network,
            allocator: Allocator::default(),
            topology_patience,
        }
    }

    fn reply(
        reply_to: &ReplyTo,
        request_id: &str,
        reply: &ResourcesReply,
        correlation_id: &str,
    ) -> Result<Outgoing, WfmError> {
        let envelope = Envelope::new(reply, SOURCE, correlation_id)?
            .with_message_id(ids::derive(&["resources-reply", request_id]));
        Ok(Outgoing::envelope(
            &reply_to.topic,
            &reply_to.key,
            &envelope,
        ))
    }
}

#[async_trait]
impl Handler for ResourcesHandler {
    type Message = ResourcesCommand;

    async fn on_assigned(
        &mut self,
        ctx: &Context,
        partitions: &[TopicPartition],
    ) -> Result<Vec<Outgoing>, WfmError> {
        self.network.caught_up(self.topology_patience).await?;
        let changelog = ctx.topics.name(Topic::ResourcesState);
        let partitions: Vec<i32> = partitions.iter().map(|(_, p)| *p).collect();
        let records =
            wfm_runtime::changelog::latest_by_key(&ctx.kafka, &changelog, &partitions).await?;
        let mut allocations = Vec::with_capacity(records.len());
        for (flow_id, value) in records {
            match Envelope::decode(&value, usize::MAX).and_then(|e| e.open::<ResourcesState>()) {
                Ok(ResourcesState::Allocation(allocation)) => allocations.push(allocation),
                Err(error) => {
                    warn!(%flow_id, %error, "undecodable allocation in changelog skipped")
                }
            }
        }
        self.allocator = Allocator::restore(allocations);
        info!(allocations = self.allocator.len(), "resources restored");
        Ok(Vec::new())
    }

    async fn on_revoked(&mut self, _partitions: &[TopicPartition]) {
        self.allocator = Allocator::default();
    }

    async fn handle(
        &mut self,
        ctx: &Context,
        delivery: &Delivery<ResourcesCommand>,
    ) -> Result<Vec<Outgoing>, WfmError> {
        let correlation_id = &delivery.envelope.correlation_id;
        let changelog = ctx.topics.name(Topic::ResourcesState);
        match &delivery.message {
            ResourcesCommand::Allocate(request) => {
                let flow_id = &request.flow.flow_id;
                let _span =
                    info_span!("allocate", %flow_id, request_id = %request.request_id).entered();
                let network = self.network.read();
                if network.switch_count() == 0 {
                    // Before the controller has published anything, "unknown
                    // switch" would be a lie: wait for the topology instead.
                    return Err(WfmError::Transient("no topology published yet".into()));
                }
                let (reply, record) = match self.allocator.allocate(&network, &request.flow) {
                    Ok((allocation, booking)) => {
                        debug!(
                            ?booking,
                            path_hops = allocation.path.forward.len(),
                            "allocated"
                        );
                        let record = match booking {
                            Booking::New => {
                                let state = ResourcesState::Allocation(allocation.clone());
                                let envelope =
                                    Envelope::new(&state, SOURCE, correlation_id)?.with_message_id(
                                        ids::derive(&["resources-state", &request.request_id]),
                                    );
                                Some(
                                    Outgoing::envelope(&changelog, flow_id, &envelope)
                                        .to_partition(delivery.partition),
                                )
                            }
                            Booking::Existing => None,
                        };
                        let reply = ResourcesReply::Allocated(Allocated {
                            request_id: request.request_id.clone(),
                            flow_id: flow_id.clone(),
                            path: allocation.path.clone(),
                            resources: allocation.resources.clone(),
                        });
                        (reply, record)
                    }
                    Err(error) => {
                        info!(%error, "allocation failed");
                        let reply = ResourcesReply::AllocationFailed(AllocationFailed {
                            request_id: request.request_id.clone(),
                            flow_id: flow_id.clone(),
                            code: error.code(),
                            message: error.to_string(),
                        });
                        (reply, None)
                    }
                };
                let reply = Self::reply(
                    &request.reply_to,
                    &request.request_id,
                    &reply,
                    correlation_id,
                )?;
                Ok(record.into_iter().chain([reply]).collect())
            }
            ResourcesCommand::Deallocate(request) => {
                let flow_id = &request.flow_id;
                let _span =
                    info_span!("deallocate", %flow_id, request_id = %request.request_id).entered();
                let freed = self.allocator.deallocate(flow_id);
                debug!(held = freed.is_some(), "deallocated");
                let tombstone = freed.map(|_| {
                    Outgoing::tombstone(&changelog, flow_id).to_partition(delivery.partition)
                });
                let reply = ResourcesReply::Deallocated(Deallocated {
                    request_id: request.request_id.clone(),
                    flow_id: flow_id.clone(),
                });
                let reply = Self::reply(
                    &request.reply_to,
                    &request.request_id,
                    &reply,
                    correlation_id,
                )?;
                Ok(tombstone.into_iter().chain([reply]).collect())
            }
        }
    }
}
