//! Every transition of both machines, without Kafka.

use wfm_protocol::flow::{FlowRecord, FlowStatus};
use wfm_protocol::northbound::{NorthboundReply, RequestErrorKind};
use wfm_protocol::resources::{AllocationErrorCode, AllocationFailed, ReplyTo};
use wfm_protocol::speaker::{JobCompleted, OperationOutcome, OperationResult, SwitchOperation};
use wfm_protocol::switch::SwitchErrorCode;

use super::*;
use crate::rules::tests::{allocation, endpoint, spec, three_switch_path};

const T: Timeouts = Timeouts {
    request_ms: 30_000,
    step_ms: 10_000,
    rollback_ms: 5_000,
    rollback_retries: 2,
};

fn core() -> RequestCore {
    let reply_to = ReplyTo {
        topic: "wfm.northbound".into(),
        key: "corr".into(),
    };
    RequestCore::new("r1", "corr", "f1", reply_to, 0, &T)
}

struct Driver {
    request: Request,
    now: i64,
}

impl Driver {
    fn feed(&mut self, event: Event) -> Vec<Effect> {
        self.now += 1;
        let mut ctx = Ctx::new(self.now, T);
        self.request.handle(&event, &mut ctx);
        ctx.effects
    }

    fn state(&self) -> String {
        self.request.state()
    }

    /// The timeout of the request's registered timer.
    fn timeout(&self) -> Event {
        let timer = self.request.core().timer.expect("a timer is armed");
        Event::Timeout { step: timer.step }
    }
}

fn create_driver(
    from: wfm_protocol::flow::FlowEndpoint,
    to: wfm_protocol::flow::FlowEndpoint,
) -> Driver {
    Driver {
        request: Request::create(core(), spec(from, to)),
        now: 0,
    }
}

fn job(effects: &[Effect]) -> (String, Vec<SwitchOperation>) {
    effects
        .iter()
        .find_map(|e| match e {
            Effect::RunJob {
                job_id, operations, ..
            } => Some((job_id.clone(), operations.clone())),
            _ => None,
        })
        .expect("a job was dispatched")
}

fn completed(effects: &[Effect], failing: Option<usize>) -> Event {
    let (job_id, operations) = job(effects);
    let results = operations
        .iter()
        .enumerate()
        .map(|(i, op)| OperationResult {
            switch_id: op.switch_id.clone(),
            cookie: op.cookie(),
            outcome: if Some(i) == failing {
                OperationOutcome::Failed {
                    code: Some(SwitchErrorCode::BadOutPort),
                    message: "no such port".into(),
                }
            } else {
                OperationOutcome::Done
            },
            attempts: 1,
        })
        .collect();
    Event::JobCompleted(JobCompleted {
        job_id,
        flow_id: "f1".into(),
        request_id: "r1".into(),
        results,
    })
}

fn saved_status(effects: &[Effect]) -> Option<FlowStatus> {
    effects.iter().rev().find_map(|e| match e {
        Effect::SaveFlow(flow) => Some(flow.status),
        _ => None,
    })
}

fn reply(effects: &[Effect]) -> Option<&NorthboundReply> {
    effects.iter().find_map(|e| match e {
        Effect::Reply(r) => Some(r),
        _ => None,
    })
}

fn allocated() -> Event {
    Event::Allocated(allocation(three_switch_path()))
}

fn create_state(d: &Driver) -> String {
    d.state()
}

/// Drives a three-switch create up to the given number of successful jobs.
fn create_until(jobs_ok: usize) -> (Driver, Vec<Effect>) {
    let mut d = create_driver(endpoint("A", 10, 100), endpoint("C", 20, 0));
    d.feed(Event::Start { existing: None });
    let mut effects = d.feed(allocated());
    for _ in 0..jobs_ok {
        let event = completed(&effects, None);
        effects = d.feed(event);
    }
    (d, effects)
}

#[test]
fn create_walks_every_forward_state_to_up() {
    let mut d = create_driver(endpoint("A", 10, 100), endpoint("C", 20, 0));
    let effects = d.feed(Event::Start { existing: None });
    assert!(effects.iter().any(|e| matches!(e, Effect::Allocate { .. })));
    assert_eq!(create_state(&d), "Validated");

    let effects = d.feed(allocated());
    assert_eq!(saved_status(&effects), Some(FlowStatus::InProgress));
    assert!(matches!(
        reply(&effects),
        Some(NorthboundReply::RequestAccepted { .. })
    ));
    assert_eq!(create_state(&d), "InstallingNonIngress");
    assert_eq!(
        job(&effects).1.len(),
        4,
        "transit and egress, both directions"
    );

    let mut effects = effects;
    for expected in [
        "ValidatingNonIngress",
        "InstallingIngress",
        "ValidatingIngress",
        "Finished",
    ] {
        let event = completed(&effects, None);
        effects = d.feed(event);
        assert_eq!(create_state(&d), expected);
    }
    assert_eq!(saved_status(&effects), Some(FlowStatus::Up));
    assert!(matches!(
        reply(&effects),
        Some(NorthboundReply::RequestFinished {
            succeeded: true,
            ..
        })
    ));
    assert!(d.request.is_terminal());
    // The last wait's timer is cancelled and no new one is armed.
    assert!(effects
        .iter()
        .any(|e| matches!(e, Effect::CancelTimeout { .. })));
    assert!(!effects
        .iter()
        .any(|e| matches!(e, Effect::ArmTimeout { .. })));
}

fn armed_steps(effects: &[Effect]) -> Vec<u32> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::ArmTimeout { step, .. } => Some(*step),
            _ => None,
        })
        .collect()
}

/// One timer per request, cancelled once at the end. Forward steps that
/// follow one another within a tenth of their time share its registration;
/// a step that begins later moves it, under its own step.
#[test]
fn forward_steps_share_one_timer_until_time_moves_it() {
    let mut d = create_driver(endpoint("A", 10, 100), endpoint("C", 20, 0));
    let mut effects = d.feed(Event::Start { existing: None });
    let mut armed = armed_steps(&effects);
    effects = d.feed(allocated());
    armed.extend(armed_steps(&effects));
    let mut jobs = 0;
    while !d.request.is_terminal() {
        assert!(
            !effects
                .iter()
                .any(|e| matches!(e, Effect::CancelTimeout { .. })),
            "no cancel between waits: {effects:?}"
        );
        let timer = d.request.core().timer.expect("a timer is armed");
        let job_deadline = effects.iter().find_map(|e| match e {
            Effect::RunJob { deadline, .. } => Some(*deadline),
            _ => None,
        });
        assert!(
            job_deadline.expect("a job") < timer.deadline,
            "the worker gives up before the hub's timer fires"
        );
        if jobs == 1 {
            // The second job took a fifth of its step's time.
            d.now += T.step_ms / 5;
        }
        effects = d.feed(completed(&effects, None));
        armed.extend(armed_steps(&effects));
        jobs += 1;
    }
    assert_eq!(
        armed,
        [1, 4],
        "allocation arms it, the step after the slow job moves it"
    );
    let cancels: Vec<_> = effects
        .iter()
        .filter(|e| matches!(e, Effect::CancelTimeout { .. }))
        .collect();
    assert_eq!(cancels, [&Effect::CancelTimeout { step: 5 }]);
    assert_eq!(d.request.core().timer, None);
}

#[test]
fn one_switch_create_skips_non_ingress() {
    let mut d = create_driver(endpoint("A", 10, 100), endpoint("A", 11, 200));
    d.feed(Event::Start { existing: None });
    let mut alloc = allocation(Default::default());
    alloc.path = Default::default();
    let effects = d.feed(Event::Allocated(alloc));
    assert_eq!(create_state(&d), "InstallingIngress");
    let effects = d.feed(completed(&effects, None));
    assert_eq!(create_state(&d), "ValidatingIngress");
    d.feed(completed(&effects, None));
    assert_eq!(create_state(&d), "Finished");
}

#[test]
fn create_of_an_existing_flow_is_rejected_with_conflict() {
    let mut d = create_driver(endpoint("A", 1, 0), endpoint("B", 1, 0));
    let existing = flow_record(FlowStatus::Up);
    let effects = d.feed(Event::Start {
        existing: Some(existing),
    });
    assert!(matches!(
        reply(&effects),
        Some(NorthboundReply::RequestRejected { error, .. }) if error.kind == RequestErrorKind::Conflict
    ));
    assert_eq!(create_state(&d), "Rejected");
    assert!(!effects
        .iter()
        .any(|e| matches!(e, Effect::SaveFlow(_) | Effect::Allocate { .. })));
}

#[test]
fn allocation_failure_rejects_without_writing_anything() {
    let mut d = create_driver(endpoint("A", 1, 0), endpoint("Z", 1, 0));
    d.feed(Event::Start { existing: None });
    let effects = d.feed(Event::AllocationFailed(AllocationFailed {
        request_id: "r1".into(),
        flow_id: "f1".into(),
        code: AllocationErrorCode::UnknownSwitch,
        message: "switch Z not found".into(),
    }));
    assert!(matches!(
        reply(&effects),
        Some(NorthboundReply::RequestRejected { error, .. }) if error.kind == RequestErrorKind::NotFound
    ));
    assert_eq!(create_state(&d), "Rejected");
    assert_eq!(saved_status(&effects), None);
}

#[test]
fn a_failed_install_rolls_back_to_down() {
    let (mut d, effects) = create_until(2);
    assert_eq!(create_state(&d), "InstallingIngress");
    let effects = d.feed(completed(&effects, Some(0)));
    assert_eq!(create_state(&d), "RemovingRules");
    let (_, removals) = job(&effects);
    assert_eq!(removals.len(), 6, "every rule of the flow is removed");

    let effects = d.feed(completed(&effects, None));
    assert_eq!(create_state(&d), "DeallocatingResources");
    assert!(effects.iter().any(|e| matches!(e, Effect::Deallocate)));

    let effects = d.feed(Event::Deallocated {
        request_id: "r1".into(),
    });
    assert_eq!(create_state(&d), "FinishedWithError");
    assert_eq!(saved_status(&effects), Some(FlowStatus::Down));
    assert!(matches!(
        reply(&effects),
        Some(NorthboundReply::RequestFinished { succeeded: false, message, .. }) if message.contains("BAD_OUT_PORT")
    ));
}

#[test]
fn a_timeout_in_any_forward_state_rolls_back() {
    for jobs_ok in 0..4 {
        let (mut d, _) = create_until(jobs_ok);
        d.feed(d.timeout());
        assert_eq!(create_state(&d), "RemovingRules", "after {jobs_ok} jobs");
    }
}

#[test]
fn stale_timeouts_and_job_results_are_ignored() {
    let (mut d, first) = create_until(0);
    let stale = d.timeout();
    // The next step begins late enough to move the timer.
    d.now += T.step_ms / 5;
    d.feed(completed(&first, None));
    assert_eq!(create_state(&d), "ValidatingNonIngress");
    // The timer's earlier registration and a duplicate result do nothing.
    assert!(d.feed(stale).is_empty());
    assert!(d.feed(completed(&first, None)).is_empty());
    assert_eq!(create_state(&d), "ValidatingNonIngress");
    // Another request's allocation does nothing either.
    let mut other = allocation(three_switch_path());
    other.request_id = "r2".into();
    assert!(d.feed(Event::Allocated(other)).is_empty());
}

#[test]
fn allocation_timeout_frees_resources_it_may_have_got() {
    let mut d = create_driver(endpoint("A", 1, 0), endpoint("C", 1, 0));
    d.feed(Event::Start { existing: None });
    let effects = d.feed(d.timeout());
    assert_eq!(create_state(&d), "DeallocatingResources");
    assert!(matches!(
        reply(&effects),
        Some(NorthboundReply::RequestRejected { .. })
    ));
    let effects = d.feed(Event::Deallocated {
        request_id: "r1".into(),
    });
    assert_eq!(create_state(&d), "FinishedWithError");
    // No flow record was ever written, so there is none to mark DOWN.
    assert_eq!(saved_status(&effects), None);
}

#[test]
fn rollback_has_its_own_timeouts_and_always_terminates() {
    let (mut d, _) = create_until(1);
    let effects = d.feed(d.timeout());
    assert_eq!(create_state(&d), "RemovingRules");
    // The timer that fired is never shared: rollback registers its own.
    assert_eq!(armed_steps(&effects).len(), 1, "{effects:?}");
    // Removal never answers: retried, then given up on. Rules may still be
    // there, so the flow keeps its resources and is FAILED for repair.
    for _ in 0..T.rollback_retries {
        d.feed(d.timeout());
        assert_eq!(create_state(&d), "RemovingRules");
    }
    let effects = d.feed(d.timeout());
    assert_eq!(create_state(&d), "FinishedWithError");
    assert_eq!(saved_status(&effects), Some(FlowStatus::Failed));
    assert!(!effects.iter().any(|e| matches!(e, Effect::Deallocate)));
}

#[test]
fn deallocation_that_never_answers_ends_failed() {
    let (mut d, effects) = create_until(1);
    let effects = d.feed(completed(&effects, Some(0)));
    d.feed(completed(&effects, None));
    assert_eq!(create_state(&d), "DeallocatingResources");
    for _ in 0..T.rollback_retries {
        let effects = d.feed(d.timeout());
        assert!(effects.iter().any(|e| matches!(e, Effect::Deallocate)));
        assert_eq!(create_state(&d), "DeallocatingResources");
    }
    let effects = d.feed(d.timeout());
    assert_eq!(create_state(&d), "FinishedWithError");
    assert_eq!(saved_status(&effects), Some(FlowStatus::Failed));
}

#[test]
fn only_the_failed_removals_are_retried() {
    let (mut d, effects) = create_until(2);
    let effects = d.feed(completed(&effects, Some(0)));
    assert_eq!(create_state(&d), "RemovingRules");
    let effects = d.feed(completed(&effects, Some(3)));
    assert_eq!(create_state(&d), "RemovingRules");
    let (_, retried) = job(&effects);
    assert_eq!(retried.len(), 1, "one removal failed, one is retried");
    d.feed(completed(&effects, None));
    assert_eq!(create_state(&d), "DeallocatingResources");
}

#[test]
fn forward_timers_never_outlive_the_request_deadline() {
    let (_, effects) = create_until(0);
    for effect in &effects {
        if let Effect::ArmTimeout { deadline, .. } = effect {
            assert!(*deadline <= T.request_ms);
        }
    }
}

#[test]
fn every_transition_is_in_the_history() {
    let (_, effects) = create_until(1);
    let transitions: Vec<_> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::History {
                action,
                from_state,
                to_state,
                ..
            } if action == "transition" => {
                Some((from_state.clone().unwrap(), to_state.clone().unwrap()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        transitions,
        [(
            "InstallingNonIngress".to_string(),
            "ValidatingNonIngress".to_string()
        )]
    );
}

#[test]
fn a_machine_survives_a_snapshot_round_trip_mid_flight() {
    let (d, effects) = create_until(1);
    let json = serde_json::to_string(&d.request).unwrap();
    let request: Request = serde_json::from_str(&json).unwrap();
    let mut restored = Driver {
        request,
        now: d.now,
    };
    assert_eq!(create_state(&restored), "ValidatingNonIngress");
    restored.feed(completed(&effects, None));
    assert_eq!(create_state(&restored), "InstallingIngress");
}

fn flow_record(status: FlowStatus) -> FlowRecord {
    let alloc = allocation(three_switch_path());
    FlowRecord {
        spec: spec(endpoint("A", 10, 100), endpoint("C", 20, 0)),
        status,
        status_info: None,
        path: Some(alloc.path),
        resources: Some(alloc.resources),
        last_request_id: "r0".into(),
        created_at: 0,
        updated_at: 0,
    }
}

fn delete_driver() -> Driver {
    Driver {
        request: Request::delete(core()),
        now: 0,
    }
}

#[test]
fn delete_removes_rules_frees_resources_and_the_flow() {
    let mut d = delete_driver();
    let effects = d.feed(Event::Start {
        existing: Some(flow_record(FlowStatus::Up)),
    });
    assert_eq!(d.state(), "RemovingRules");
    assert_eq!(saved_status(&effects), Some(FlowStatus::InProgress));
    assert_eq!(job(&effects).1.len(), 6);
    d.feed(completed(&effects, None));
    assert_eq!(d.state(), "DeallocatingResources");
    let effects = d.feed(Event::Deallocated {
        request_id: "r1".into(),
    });
    assert_eq!(d.state(), "Finished");
    assert!(effects.iter().any(|e| matches!(e, Effect::RemoveFlow)));
    assert!(d.request.is_terminal());
}

#[test]
fn delete_retries_a_failed_removal_then_finishes() {
    let mut d = delete_driver();
    let effects = d.feed(Event::Start {
        existing: Some(flow_record(FlowStatus::Up)),
    });
    let effects = d.feed(completed(&effects, Some(2)));
    assert_eq!(d.state(), "RemovingRules");
    assert_eq!(job(&effects).1.len(), 1);
    d.feed(completed(&effects, None));
    assert_eq!(d.state(), "DeallocatingResources");
    let effects = d.feed(Event::Deallocated {
        request_id: "r1".into(),
    });
    assert!(matches!(
        reply(&effects),
        Some(NorthboundReply::RequestFinished {
            succeeded: true,
            ..
        })
    ));
}

#[test]
fn a_delete_whose_rules_stay_leaves_the_flow_failed_with_its_resources() {
    let mut d = delete_driver();
    let mut effects = d.feed(Event::Start {
        existing: Some(flow_record(FlowStatus::Up)),
    });
    for _ in 0..=T.rollback_retries {
        effects = d.feed(completed(&effects, Some(0)));
    }
    assert_eq!(d.state(), "FinishedWithError");
    assert_eq!(saved_status(&effects), Some(FlowStatus::Failed));
    assert!(!effects
        .iter()
        .any(|e| matches!(e, Effect::Deallocate | Effect::RemoveFlow)));
    assert!(matches!(
        reply(&effects),
        Some(NorthboundReply::RequestFinished { succeeded: false, message, .. }) if message.contains("was UP") && message.contains("BAD_OUT_PORT")
    ));
}

#[test]
fn delete_of_an_unknown_flow_is_not_found() {
    let mut d = delete_driver();
    let effects = d.feed(Event::Start { existing: None });
    assert!(matches!(
        reply(&effects),
        Some(NorthboundReply::RequestRejected { error, .. }) if error.kind == RequestErrorKind::NotFound
    ));
}

#[test]
fn a_delete_that_times_out_ends_failed() {
    let mut d = delete_driver();
    let mut effects = d.feed(Event::Start {
        existing: Some(flow_record(FlowStatus::Down)),
    });
    for _ in 0..=T.rollback_retries {
        effects = d.feed(d.timeout());
    }
    assert_eq!(d.state(), "FinishedWithError");
    assert_eq!(saved_status(&effects), Some(FlowStatus::Failed));
}

/// Every transition reachable from `start`, found by feeding each state every
/// event that could arrive there, labelled by that event.
fn explore(
    start: Request,
    first_events: Vec<(&'static str, Event)>,
) -> std::collections::BTreeSet<(String, String, String)> {
    let mut edges = std::collections::BTreeSet::new();
    let mut seen = std::collections::HashSet::new();
    let mut queue = vec![(
        serde_json::to_string(&start).unwrap(),
        Vec::<Effect>::new(),
        true,
    )];
    while let Some((snapshot, effects, initial)) = queue.pop() {
        let candidates: Vec<(&'static str, Event)> = if initial {
            first_events.clone()
        } else {
            let request: Request = serde_json::from_str(&snapshot).unwrap();
            let core = request.core().clone();
            let mut events = vec![
                ("allocated", allocated()),
                (
                    "allocated, one switch",
                    Event::Allocated(allocation(Default::default())),
                ),
                (
                    "allocation failed",
                    Event::AllocationFailed(AllocationFailed {
                        request_id: "r1".into(),
                        flow_id: "f1".into(),
                        code: AllocationErrorCode::NoPath,
                        message: "no path".into(),
                    }),
                ),
                (
                    "deallocated",
                    Event::Deallocated {
                        request_id: "r1".into(),
                    },
                ),
                (
                    "timeout",
                    Event::Timeout {
                        step: core.timer.map_or(core.step, |timer| timer.step),
                    },
                ),
            ];
            if effects.iter().any(|e| matches!(e, Effect::RunJob { .. })) {
                events.push(("job done", completed(&effects, None)));
                events.push(("job failed", completed(&effects, Some(0))));
            }
            events
        };
        for (label, event) in candidates {
            let mut request: Request = serde_json::from_str(&snapshot).unwrap();
            let mut ctx = Ctx::new(1, T);
            request.handle(&event, &mut ctx);
            for effect in &ctx.effects {
                if let Effect::History {
                    action,
                    from_state: Some(from),
                    to_state: Some(to),
                    ..
                } = effect
                {
                    if action == "transition" {
                        edges.insert((from.clone(), to.clone(), label.to_owned()));
                    }
                }
            }
            let signature = (
                request.state(),
                request.core().retries,
                request.core().flow.is_some(),
            );
            if !request.is_terminal() && !ctx.effects.is_empty() && seen.insert(signature) {
                queue.push((serde_json::to_string(&request).unwrap(), ctx.effects, false));
            }
        }
    }
    edges
}

fn mermaid(title: &str, edges: &std::collections::BTreeSet<(String, String, String)>) -> String {
    let mut out = format!("## {title}\n\n```mermaid\nstateDiagram-v2\n    [*] --> Initialized\n");
    let mut labels: std::collections::BTreeMap<(&str, &str), Vec<&str>> = Default::default();
    for (from, to, label) in edges {
        labels.entry((from, to)).or_default().push(label);
    }
    for ((from, to), events) in &labels {
        out.push_str(&format!("    {from} --> {to}: {}\n", events.join(" / ")));
    }
    let terminals: std::collections::BTreeSet<&str> = edges
        .iter()
        .map(|(_, to, _)| to.as_str())
        .filter(|to| matches!(*to, "Finished" | "FinishedWithError" | "Rejected"))
        .collect();
    for terminal in terminals {
        out.push_str(&format!("    {terminal} --> [*]\n"));
    }
    out.push_str("```\n");
    out
}

/// docs/hub-fsm.md is generated from the machines themselves: this test
/// explores them and fails when the document is out of date
/// (`WFM_UPDATE_DOCS=1 cargo test -p wfm-hub` rewrites it).
#[test]
fn the_documented_diagrams_match_the_machines() {
    let create = explore(
        Request::create(core(), spec(endpoint("A", 10, 100), endpoint("C", 20, 0))),
        vec![
            ("create", Event::Start { existing: None }),
            (
                "create, flow exists",
                Event::Start {
                    existing: Some(flow_record(FlowStatus::Up)),
                },
            ),
        ],
    );
    let delete = explore(
        Request::delete(core()),
        vec![
            (
                "delete",
                Event::Start {
                    existing: Some(flow_record(FlowStatus::Up)),
                },
            ),
            ("delete, no such flow", Event::Start { existing: None }),
        ],
    );
    // Every state of both machines is reached.
    for state in [
        "Validated",
        "InstallingNonIngress",
        "ValidatingNonIngress",
        "InstallingIngress",
        "ValidatingIngress",
        "RemovingRules",
        "DeallocatingResources",
        "Finished",
        "FinishedWithError",
        "Rejected",
    ] {
        assert!(
            create.iter().any(|(_, to, _)| to == state),
            "create never reaches {state}"
        );
    }
    for state in [
        "RemovingRules",
        "DeallocatingResources",
        "Finished",
        "FinishedWithError",
        "Rejected",
    ] {
        assert!(
            delete.iter().any(|(_, to, _)| to == state),
            "delete never reaches {state}"
        );
    }
    let document = format!(
        "# Hub state machines\n\nGenerated from the code by `the_documented_diagrams_match_the_machines` \
         (hub/src/fsm/tests.rs), which feeds every state every event that can reach it. \
         Self-transitions (a rollback step retried after its timeout) are not drawn.\n\n{}\n{}",
        mermaid("Flow create", &create),
        mermaid("Flow delete", &delete)
    );
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/hub-fsm.md");
    if std::env::var_os("WFM_UPDATE_DOCS").is_some() {
        std::fs::write(&path, &document).unwrap();
    }
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        current == document,
        "docs/hub-fsm.md is out of date: run WFM_UPDATE_DOCS=1 cargo test -p wfm-hub"
    );
}
