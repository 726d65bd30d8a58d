//! Settings of the northbound API (`[northbound]` in the TOML file).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NorthboundConfig {
    pub http_addr: SocketAddr,
    /// How long a mutation waits for the hub's first answer before 408.
    pub request_timeout_ms: u64,
    /// HTTP requests served at once; beyond it, 503 at once rather than a queue.
    pub max_in_flight: usize,
    /// Larger request bodies get 413 unread.
    pub max_body_bytes: usize,
    /// Seconds a client is told to wait (`Retry-After`) after a 503.
    pub retry_after_s: u64,
    /// Bearer tokens accepted for mutating calls; empty disables authentication.
    pub auth_tokens: Vec<String>,
    /// History events kept per flow in memory; older ones are dropped first.
    pub max_history_per_flow: usize,
}

impl Default for NorthboundConfig {
    fn default() -> Self {
        Self {
            http_addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            request_timeout_ms: 10_000,
            max_in_flight: 1_000,
            max_body_bytes: 64 * 1024,
            retry_after_s: 1,
            auth_tokens: Vec::new(),
            max_history_per_flow: 1_000,
        }
    }
}
