//! The consumer of `wfm.switch`: each command meets the faults, then its
//! switch, and its reply is produced at once or, with injected latency, held
//! in a delay queue served through the runtime's wakeups, so that a slow
//! reply never holds up commands to other switches.
//!
//! A delayed reply is produced after its command's offset is committed, so a
//! crash loses it, as a real controller would: the sender's timeout covers it.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;
use tracing::debug;
use wfm_protocol::switch::{
    SwitchCommand, SwitchError, SwitchErrorCode, SwitchReply, SwitchResponse, SwitchResult,
};
use wfm_protocol::Envelope;
use wfm_runtime::{Context, Delivery, Handler, Outgoing, WfmError};

use crate::faults::Decision;
use crate::SharedSimulation;

/// The `source` of every envelope the simulator produces.
pub const SOURCE: &str = "simulator";

pub struct SwitchHandler {
    simulation: SharedSimulation,
    delayed: BinaryHeap<Delayed>,
    /// Tie-breaker among replies due at the same instant: first in, first out.
    sequence: u64,
}

struct Delayed {
    due: Instant,
    sequence: u64,
    topic: String,
    key: String,
    envelope: Envelope,
}

// Ordered so that the max-heap pops the earliest due reply first.
impl Ord for Delayed {
    fn cmp(&self, other: &Self) -> Ordering {
        (other.due, other.sequence).cmp(&(self.due, self.sequence))
    }
}

impl PartialOrd for Delayed {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Delayed {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Delayed {}

impl SwitchHandler {
    pub fn new(simulation: SharedSimulation) -> Self {
        Self {
            simulation,
            delayed: BinaryHeap::new(),
            sequence: 0,
        }
    }

    /// The command's outcome and how long its reply waits, or `None` for silence.
    fn execute(&self, command: &SwitchCommand) -> Option<(Duration, SwitchResult)> {
        let header = command.header();
        let mut simulation = crate::lock(&self.simulation);
        let simulation = &mut *simulation;
        let Decision::Reply { delay, fault } = simulation
            .faults
            .decide(&header.switch_id, command.command_type())
        else {
            return None;
        };
        let result = match (fault, simulation.network.get_mut(&header.switch_id)) {
            (Some(fault), _) => SwitchResult::Error(fault),
            (None, Some(switch)) => switch.apply(command),
            (None, None) => SwitchResult::Error(SwitchError::new(
                SwitchErrorCode::SwitchUnavailable,
                format!("no switch {} in the topology", header.switch_id),
            )),
        };
        Some((delay, result))
    }

    /// The reply to produce now, if any; a delayed reply is queued instead.
    fn respond(&mut self, delivery: &Delivery<SwitchCommand>) -> Result<Vec<Outgoing>, WfmError> {
        let command = &delivery.message;
        let header = command.header();
        // Commands to one switch stay in order only if they share its partition.
        if delivery.key.as_deref() != Some(header.switch_id.as_str()) {
            return Err(WfmError::Rejected(format!(
                "record key {:?} is not the command's switch_id `{}`",
                delivery.key, header.switch_id
            )));
        }
        if header.reply_topic.is_empty() {
            return Err(WfmError::Rejected("command has no reply_topic".into()));
        }
        let Some((delay, result)) = self.execute(command) else {
            debug!("command dropped (silence)");
            return Ok(Vec::new());
        };
        debug!(?delay, ?result, "command executed");
        let reply = SwitchResponse::SwitchReply(SwitchReply {
            command_id: header.command_id.clone(),
            attempt: header.attempt,
            switch_id: header.switch_id.clone(),
            result,
        });
        let attempt = header.attempt.to_string();
        let envelope =
            Envelope::new(&reply, SOURCE, &delivery.envelope.correlation_id)?.with_message_id(
                wfm_protocol::ids::derive(&["switch-reply", &header.command_id, &attempt]),
            );
        if delay.is_zero() {
            let reply = Outgoing::envelope(&header.reply_topic, &header.reply_key, &envelope);
            return Ok(vec![reply]);
        }
        self.sequence += 1;
        self.delayed.push(Delayed {
            due: Instant::now() + delay,
            sequence: self.sequence,
            topic: header.reply_topic.clone(),
            key: header.reply_key.clone(),
            envelope,
        });
        Ok(Vec::new())
    }
}

#[async_trait]
impl Handler for SwitchHandler {
    type Message = SwitchCommand;

    async fn handle(
        &mut self,
        _ctx: &Context,
        delivery: &Delivery<SwitchCommand>,
    ) -> Result<Vec<Outgoing>, WfmError> {
        let command = &delivery.message;
        let header = command.header();
        tracing::info_span!(
            "switch_command",
            switch_id = %header.switch_id,
            command_id = %header.command_id,
            attempt = header.attempt,
            command = ?command.command_type(),
        )
        .in_scope(|| self.respond(delivery))
    }

    fn next_wakeup(&self) -> Option<Instant> {
        self.delayed.peek().map(|d| d.due)
    }

    async fn on_wakeup(&mut self, _ctx: &Context) -> Result<Vec<Outgoing>, WfmError> {
        Ok(self.due_replies(Instant::now()))
    }
}

impl SwitchHandler {
    /// Takes the delayed replies due by `now` out of the queue, earliest first.
    fn due_replies(&mut self, now: Instant) -> Vec<Outgoing> {
        let mut due = Vec::new();
        while self.delayed.peek().is_some_and(|d| d.due <= now) {
            if let Some(mut delayed) = self.delayed.pop() {
                // Stamped when sent, so that traces show the latency on the switch's hop.
                delayed.envelope.created_at = wfm_protocol::now_ms();
                due.push(Outgoing::envelope(
                    delayed.topic,
                    delayed.key,
                    &delayed.envelope,
                ));
            }
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use wfm_protocol::switch::CommandHeader;
    use wfm_protocol::topology::switch_id;

    use super::*;
    use crate::faults::{FaultSettings, Faults, Latency};
    use crate::switch::tests::ingress;
    use crate::switch::Network;
    use crate::topology::Topology;
    use crate::Simulation;

    fn handler(switches: u64, latency_ms: u64) -> SwitchHandler {
        let faults = FaultSettings {
            latency_ms: Latency::Fixed(latency_ms),
            ..FaultSettings::default()
        };
        let simulation = Simulation {
            network: Network::new(&Topology::ring(switches).switches),
            faults: Faults::new(faults, Some(1)).unwrap(),
        };
        SwitchHandler::new(Arc::new(Mutex::new(simulation)))
    }

    fn install(n: u64, switches: u64) -> Delivery<SwitchCommand> {
        let switch = switch_id(n % switches + 1);
        let message = SwitchCommand::InstallRule {
            header: CommandHeader {
                command_id: format!("c{n}"),
                attempt: 3,
                switch_id: switch.clone(),
                reply_topic: "replies".into(),
                reply_key: format!("job-{n}"),
            },
            // Meter ids are per switch: one rule per cookie, one meter per rule.
            rule: ingress(n + 1, n as u32 + 1),
        };
        Delivery {
            topic: "wfm.switch".into(),
            partition: 0,
            offset: n as i64,
            key: Some(switch),
            envelope: Envelope::new(&message, "test", "corr").unwrap(),
            message,
        }
    }

    fn reply_of(out: &Outgoing) -> (Envelope, SwitchReply) {
        let envelope = Envelope::decode(out.value.as_deref().unwrap(), usize::MAX).unwrap();
        let SwitchResponse::SwitchReply(reply) = envelope.open().unwrap();
        (envelope, reply)
    }

    #[test]
    fn reply_goes_where_the_command_says_with_a_deterministic_id() {
        let mut handler = handler(6, 0);
        let delivery = install(7, 6);
        let first = handler.respond(&delivery).unwrap();
        let again = handler.respond(&delivery).unwrap();
        assert_eq!(
            (first[0].topic.as_str(), first[0].key.as_str()),
            ("replies", "job-7")
        );
        let (envelope, reply) = reply_of(&first[0]);
        assert_eq!((reply.command_id.as_str(), reply.attempt), ("c7", 3));
        assert_eq!(reply.result, SwitchResult::Ok { rules: None });
        assert_eq!(envelope.correlation_id, "corr");
        assert_eq!(envelope.message_id, reply_of(&again[0]).0.message_id);
    }

    #[test]
    fn misrouted_or_unanswerable_commands_are_rejected() {
        let mut handler = handler(6, 0);
        let mut delivery = install(1, 6);
        delivery.key = Some(switch_id(5));
        assert!(matches!(
            handler.respond(&delivery),
            Err(WfmError::Rejected(_))
        ));
        let mut delivery = install(1, 6);
        if let SwitchCommand::InstallRule { header, .. } = &mut delivery.message {
            header.reply_topic.clear();
        }
        assert!(matches!(
            handler.respond(&delivery),
            Err(WfmError::Rejected(_))
        ));
    }

    #[test]
    fn delayed_replies_wait_and_leave_in_due_order() {
        let mut handler = handler(6, 50);
        assert_eq!(handler.next_wakeup(), None);
        for n in 0..3 {
            assert!(handler.respond(&install(n, 6)).unwrap().is_empty());
        }
        let wakeup = handler.next_wakeup().unwrap();
        assert!(handler
            .due_replies(wakeup - Duration::from_millis(1))
            .is_empty());
        let due = handler.due_replies(wakeup + Duration::from_millis(1));
        let ids: Vec<String> = due.iter().map(|o| reply_of(o).1.command_id).collect();
        assert_eq!(ids, vec!["c0", "c1", "c2"]);
        assert_eq!(handler.next_wakeup(), None);
    }

    /// The simulator's own cost per command, without Kafka: run with
    /// `cargo test -p wfm-simulators --release -- --ignored --nocapture`.
    #[test]
    #[ignore = "measurement, not a test"]
    fn in_memory_reply_rate_with_100k_rules_on_2000_switches() {
        const SWITCHES: u64 = 2_000;
        const RULES: u64 = 100_000;
        let mut handler = handler(SWITCHES, 0);
        let deliveries: Vec<_> = (0..RULES * 2).map(|n| install(n, SWITCHES)).collect();
        for delivery in &deliveries[..RULES as usize] {
            handler.respond(delivery).unwrap();
        }
        let started = std::time::Instant::now();
        for delivery in &deliveries[RULES as usize..] {
            assert_eq!(handler.respond(delivery).unwrap().len(), 1);
        }
        let elapsed = started.elapsed();
        let rules = crate::lock(&handler.simulation).network.rule_count();
        println!(
            "{RULES} installs on top of {RULES} rules in {elapsed:?}: {:.0} replies/s; {rules} rules held",
            RULES as f64 / elapsed.as_secs_f64()
        );
    }
}
