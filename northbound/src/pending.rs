//! Mutations waiting for the hub's first answer, keyed by request id. An
//! entry lives exactly as long as its [`Waiter`]: answered, timed out or
//! abandoned by a disconnected client, it is gone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::oneshot;
use wfm_protocol::northbound::NorthboundReply;

#[derive(Debug, Clone, Default)]
pub struct Pending {
    waiting: Arc<Mutex<HashMap<String, oneshot::Sender<NorthboundReply>>>>,
}

impl Pending {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, oneshot::Sender<NorthboundReply>>> {
        self.waiting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers before the command is sent, so that even an instant answer finds its waiter.
    pub fn register(&self, request_id: &str) -> Waiter {
        let (sender, receiver) = oneshot::channel();
        self.lock().insert(request_id.to_owned(), sender);
        Waiter {
            request_id: request_id.to_owned(),
            pending: self.clone(),
            receiver,
        }
    }

    /// Hands a reply to its waiter; false when nobody here waits for it (another
    /// instance's request, or a later answer to one already answered).
    pub fn deliver(&self, reply: NorthboundReply) -> bool {
        let sender = self.lock().remove(reply.request_id());
        sender.is_some_and(|sender| sender.send(reply).is_ok())
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

pub struct Waiter {
    request_id: String,
    pending: Pending,
    receiver: oneshot::Receiver<NorthboundReply>,
}

impl Waiter {
    /// The first answer, or `None` after `timeout`.
    pub async fn wait(mut self, timeout: Duration) -> Option<NorthboundReply> {
        tokio::time::timeout(timeout, &mut self.receiver)
            .await
            .ok()
            .and_then(Result::ok)
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.pending.lock().remove(&self.request_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wfm_protocol::northbound::{RequestError, RequestErrorKind};

    fn rejected(request_id: &str) -> NorthboundReply {
        NorthboundReply::RequestRejected {
            request_id: request_id.into(),
            flow_id: "f".into(),
            error: RequestError {
                kind: RequestErrorKind::Conflict,
                message: "busy".into(),
            },
        }
    }

    #[tokio::test]
    async fn an_answer_reaches_its_waiter_and_frees_the_entry() {
        let pending = Pending::default();
        let waiter = pending.register("r1");
        assert_eq!(pending.len(), 1);
        assert!(!pending.deliver(rejected("other")));
        assert!(pending.deliver(rejected("r1")));
        assert_eq!(pending.len(), 0);
        assert_eq!(
            waiter.wait(Duration::from_secs(1)).await,
            Some(rejected("r1"))
        );
        assert!(
            !pending.deliver(rejected("r1")),
            "a second answer finds nobody"
        );
    }

    #[tokio::test]
    async fn a_timeout_or_an_abandoned_waiter_leaves_nothing_behind() {
        let pending = Pending::default();
        let waiter = pending.register("r1");
        assert_eq!(waiter.wait(Duration::from_millis(10)).await, None);
        assert!(pending.is_empty());
        drop(pending.register("r2"));
        assert!(pending.is_empty());
    }
}
